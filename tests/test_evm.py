"""The Solidity kit (contracts/) on a real EVM: anvil, with contracts compiled by solcjs.

The chain builds each request with the kit's library, the service answers that very job from the
provider double, and a contract decodes the answer from what the node would hand it,
`abi.encode(bytes raw_output, bytes processed_output)`: every value asserted is one a contract read.
The library's bytes are also held to css_core's encoder (and so to infernet-ml's, which the compat
session holds to the same encoder).

anvil and solc come from npm at contracts/package-lock.json's versions (`npm ci --prefix contracts`;
the nox `tests` session runs it). Without them these tests skip, naming the command, except under
CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_abi.abi import decode, encode
from eth_hash.auto import keccak

from css_core.jobs.codec import decode_request, encode_request
from css_core.testing import ProviderDouble, Route
from css_core.types import Message
from tests.conftest import ONCHAIN, assert_error, free_port, job, post_job

pytestmark = pytest.mark.processes  # anvil and node: the same on every Python

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
MODEL = "gpt-4"


# -- the tools -------------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    message = f"{reason}: run `npm ci --prefix contracts` (node and npm needed)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _anvil() -> Path:
    # the platform package's own binary: the npm wrapper (a node script) would sit between the
    # test and anvil, and a signal to it may leave anvil running
    found = sorted(CONTRACTS.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"))
    if not found:
        _unavailable("anvil is not installed in contracts/node_modules")
    return found[0]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every contract of contracts/, compiled by contracts/build.js (warnings fail it), by name."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH")
    if not (CONTRACTS / "node_modules" / "solc").is_dir():
        _unavailable("solc (solcjs) is not installed in contracts/node_modules")
    out = tmp_path_factory.mktemp("evm-build")
    built = subprocess.run([str(node), str(CONTRACTS / "build.js"), str(out), "--strict"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr + built.stdout
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}


class RevertedError(Exception):
    def __init__(self, message: str, data: str) -> None:
        super().__init__(message)
        self.data = data  # the revert data, 0x hex


def abi_type(entry: dict[str, Any]) -> str:
    """The canonical ABI type of one `inputs`/`outputs` entry (tuples spelled out)."""
    kind: str = entry["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in entry["components"]) + ")" + kind.removeprefix("tuple")
    return kind


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


class Contract:
    def __init__(self, chain: Chain, address: str, artifact: dict[str, Any]) -> None:
        self.chain, self.address, self.artifact = chain, address, artifact

    def _function(self, name: str) -> tuple[str, list[str], list[str]]:
        [entry] = [e for e in self.artifact["abi"] if e["type"] == "function" and e["name"] == name]
        inputs, outputs = [abi_type(i) for i in entry["inputs"]], [abi_type(o) for o in entry["outputs"]]
        identifier = self.artifact["methodIdentifiers"][f"{name}({','.join(inputs)})"]
        return identifier, inputs, outputs

    def _data(self, name: str, args: Sequence[Any]) -> tuple[str, list[str]]:
        identifier, inputs, outputs = self._function(name)
        return "0x" + identifier + encode(inputs, list(args)).hex(), outputs

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        """eth_call: the function's return values, decoded."""
        data, outputs = self._data(name, args)
        result = self.chain.rpc("eth_call", [{"to": self.address, "data": data}, "latest"])
        return tuple(decode(outputs, bytes.fromhex(result.removeprefix("0x"))))

    def transact(self, name: str, *args: Any) -> dict[str, Any]:
        """A mined transaction from the first account: its receipt."""
        data, _ = self._data(name, args)
        return self.chain.send({"to": self.address, "data": data})


class Chain:
    """JSON-RPC to anvil: transactions from its first unlocked account, mined at once."""

    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url, self.client, self.ids = url, client, 0
        self.account: str = self.rpc("eth_accounts", [])[0]

    def rpc(self, method: str, params: list[Any]) -> Any:
        self.ids += 1
        answer = self.client.post(self.url, json={"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        answer.raise_for_status()
        body = answer.json()
        if "error" in body:
            error = body["error"]
            raise RevertedError(f"{method}: {error.get('message')}", str(error.get("data") or "0x"))
        return body["result"]

    def send(self, tx: dict[str, Any]) -> dict[str, Any]:
        tx_hash = self.rpc("eth_sendTransaction", [{"from": self.account, "gas": hex(10_000_000), **tx}])
        # anvil mines each transaction at once, but answers before the block is in
        deadline = time.monotonic() + 30
        while (receipt := self.rpc("eth_getTransactionReceipt", [tx_hash])) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"transaction {tx_hash} was not mined")
            time.sleep(0.01)
        assert receipt["status"] == "0x1", receipt
        result: dict[str, Any] = receipt
        return result

    def deploy(self, artifact: dict[str, Any], *args: Any) -> Contract:
        [constructor] = [e for e in artifact["abi"] if e["type"] == "constructor"] or [{"inputs": []}]
        arguments = encode([abi_type(i) for i in constructor["inputs"]], list(args)).hex()
        receipt = self.send({"data": artifact["bytecode"] + arguments})
        return Contract(self, receipt["contractAddress"], artifact)


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    """anvil on a free loopback port for the session, stopped after it."""
    anvil = _anvil()
    port = free_port()
    process = subprocess.Popen([str(anvil), "--host", "127.0.0.1", "--port", str(port), "--silent"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(timeout=30, trust_env=False) as client:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"anvil exited with {process.returncode}: {process.communicate()[0]}")
                try:
                    client.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "eth_chainId", "params": []})
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("anvil did not answer JSON-RPC") from None
                    time.sleep(0.05)
            yield Chain(url, client)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture(scope="session")
def kit(chain: Chain, artifacts: dict[str, dict[str, Any]]) -> Contract:
    return chain.deploy(artifacts["CSSKitHarness"])


# -- the service's side ----------------------------------------------------------------------------


def answer_with(double: ProviderDouble, content: str) -> None:
    """The double answers every chat completion with this message content."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    body = {"id": "chatcmpl-evm", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    double.add_route(Route("POST", r"/chat/completions", body))


def answer_on_chain(http: httpx.Client, url: str, request: bytes) -> dict[str, str]:
    """The service's answer to an on-chain job whose data is `request`."""
    answer = post_job(http, url, job(request.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert answer.status_code == 200, answer.text
    body: dict[str, str] = answer.json()
    return body


def node_output(answer: dict[str, str]) -> bytes:
    """What the node hands `_receiveCompute` as `output`: abi.encode(bytes raw_output, bytes processed_output)."""
    return encode(["bytes", "bytes"], [bytes.fromhex(answer["raw_output"]), bytes.fromhex(answer["processed_output"])])


def node_input(answer: dict[str, str]) -> bytes:
    return encode(["bytes", "bytes"], [bytes.fromhex(answer["raw_input"]), bytes.fromhex(answer["processed_input"])])


# -- the library's bytes ---------------------------------------------------------------------------

UNICODE = "ünïcödé ✓ 日本語 🙂 \u0000 end"
SIZES = (0, 1, 31, 32, 33, 64, 65, 200) * 5  # around the 32-byte word
MANY = tuple(Message(("user", "assistant")[i % 2], "x" * size) for i, size in enumerate(SIZES))
PLAIN_CASES = {
    "one message": (0, 0, "gpt-4", (Message("user", "hi"),)),
    "unicode": (2, 0, "sonar-ü", (Message("system", "be brief"), Message("user", UNICODE))),
    "empty strings": (3, 0, "", (Message("", ""),)),
    "no messages": (0, 0, "gpt-4", ()),
    "many messages": (1, 0, "gpt-neo-20b", MANY),
    "embeddings": (0, 1, "text-embedding-3-small", (Message("user", UNICODE),)),
    "azure": (5, 0, "my-deployment", (Message("user", "hi"),)),
}
TYPED_CASES = {
    "approval": (0, "gpt-4", (Message("user", "approve?"),), "(bool approved, uint8 confidence, string reason)"),
    "unicode": (4, "gemini-2.0-flash", (Message("user", UNICODE),), "(string résumé)"),
    "empty model, no messages": (3, "", (), "(bool ok)"),
    "many messages": (0, "gpt-4", MANY, "(string label, (uint8 score, string[] tags) detail, uint16[3] votes)"),
}


def pairs(messages: tuple[Message, ...]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


@pytest.mark.parametrize("case", PLAIN_CASES.values(), ids=PLAIN_CASES.keys())
def test_library_encodes_endpoints_0_and_1_as_the_service_and_infernet_ml(
    kit: Contract, case: tuple[int, int, str, tuple[Message, ...]]
) -> None:
    provider, endpoint, model, messages = case
    expected = encode_request(provider, endpoint, model, messages)
    (on_chain,) = kit.call("encode", provider, endpoint, model, pairs(messages))
    assert on_chain == expected
    assert decode_request(on_chain) == (provider, endpoint, model, messages, None)
    if endpoint == 0:
        assert kit.call("completion", provider, model, pairs(messages)) == (expected,)


@pytest.mark.parametrize("case", TYPED_CASES.values(), ids=TYPED_CASES.keys())
def test_library_encodes_typed_completions_as_the_service(
    kit: Contract, case: tuple[int, str, tuple[Message, ...], str]
) -> None:
    provider, model, messages, answer_type = case
    expected = encode_request(provider, 2, model, messages, answer_type)
    (on_chain,) = kit.call("typedCompletion", provider, model, pairs(messages), answer_type)
    assert on_chain == expected
    assert decode_request(on_chain) == (provider, 2, model, messages, answer_type)


def test_one_user_message_helpers(kit: Contract) -> None:
    assert kit.call("userMessage", UNICODE) == ((("user", UNICODE),),)  # eth-abi reads arrays as tuples
    user = (Message("user", UNICODE),)
    assert kit.call("ask", 2, "sonar", UNICODE) == (encode_request(2, 0, "sonar", user),)
    typed_user = encode_request(3, 2, "claude", user, "(bool ok)")
    assert kit.call("askTyped", 3, "claude", UNICODE, "(bool ok)") == (typed_user,)


def test_provider_and_endpoint_ids(kit: Contract) -> None:
    # OPENAI, GOOSEAI, PERPLEXITYAI, ANTHROPIC, GEMINI, AZURE; COMPLETIONS, EMBEDDINGS, TYPED_COMPLETIONS
    assert kit.call("ids") == ((0, 1, 2, 3, 4, 5), (0, 1, 2))


@pytest.mark.parametrize(("function", "args", "error"), [
    ("encode", (0, 2, "gpt-4", [("user", "hi")]), "AnswerTypeRequired()"),
    ("typedCompletion", (0, "gpt-4", [("user", "hi")], ""), "EmptyAnswerType()"),
], ids=["4 fields for endpoint 2", "empty answer type"])
def test_library_refuses_a_request_the_service_would(
    kit: Contract, function: str, args: tuple[Any, ...], error: str
) -> None:
    with pytest.raises(RevertedError) as reverted:
        kit.call(function, *args)
    assert reverted.value.data == "0x" + selector(error).hex()


# -- the service's answers, decoded on-chain --------------------------------------------------------


def test_plain_completion_read_on_chain(kit: Contract, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    answer_with(double, UNICODE)
    (request,) = kit.call("ask", 0, MODEL, "Say hello")
    answer = answer_on_chain(http, url, request)
    output = node_output(answer)
    assert kit.call("textOf", output) == (UNICODE,)
    assert kit.call("rawOf", output) == (bytes.fromhex(answer["raw_output"]),)
    assert double.requests[-1].json["messages"] == [{"role": "user", "content": "Say hello"}]


def typed(kit: Contract, double: ProviderDouble, url: str, http: httpx.Client, answer_type: str, reply: Any) -> bytes:
    """The chain asks for `answer_type`; the double answers `reply` as JSON: the output a contract receives."""
    answer_with(double, json.dumps(reply))
    (request,) = kit.call("askTyped", 0, MODEL, "Answer in the requested form.", answer_type)
    return node_output(answer_on_chain(http, url, request))


def test_typed_tuple_read_on_chain(kit: Contract, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    reason = "on topic, ✓ funded"
    output = typed(kit, double, url, http, "(bool approved, uint8 confidence, string reason)",
                   {"approved": True, "confidence": 87, "reason": reason})
    assert kit.call("decodeApproval", output) == (True, 87, reason)


def test_typed_nested_tuple_with_arrays_read_on_chain(
    kit: Contract, double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    reply = {"label": "grant", "detail": {"score": 9, "tags": ["defi", "", "日本"]}, "votes": [1, 0, 65535]}
    answer_type = "(string label, (uint8 score, string[] tags) detail, uint16[3] votes)"
    output = typed(kit, double, url, http, answer_type, reply)
    assert kit.call("decodeReview", output) == ("grant", (9, ("defi", "", "日本")), (1, 0, 65535))


def test_typed_address_read_on_chain(kit: Contract, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    output = typed(kit, double, url, http, "(address recipient)", {"recipient": checksummed})
    (recipient,) = kit.call("decodeAddress", output)
    assert recipient.lower() == checksummed.lower()  # on-chain, an address has no case


def test_typed_uint256_above_2_53_read_on_chain(
    kit: Contract, double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    amount = 2**200 + 12345  # no JSON number holds it exactly: the schema asks for a decimal string
    output = typed(kit, double, url, http, "(uint256 amount)", {"amount": str(amount)})
    assert kit.call("decodeUint256", output) == (amount,)


def test_typed_value_out_of_range_is_never_delivered(
    kit: Contract, double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_REQUEST_TRIES="2")
    answer_with(double, json.dumps({"delta": 300}))
    (request,) = kit.call("askTyped", 0, MODEL, "How far off?", "(int8 delta)")
    answer = post_job(http, url, job(request.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert_error(answer, 502, "delta", "300")
    assert len(double.requests) == 2  # an unreadable answer is retried, then the job fails


def test_spam_filter_example_end_to_end(
    chain: Chain, artifacts: dict[str, dict[str, Any]], double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    filter_ = chain.deploy(artifacts["SpamFilterHarness"], chain.account, 0, MODEL)
    text = "Buy CHEAP tokens now!!! ✓ visit example.com"
    receipt = filter_.transact("submit", text)
    event = "0x" + keccak(b"Submitted(uint256,uint32)").hex()
    [submitted] = [log for log in receipt["logs"] if log["topics"][0] == event]
    proposal_id, subscription_id = int(submitted["topics"][1], 16), int(submitted["topics"][2], 16)

    # what the node reads from the SDK is the question the contract built from its own state
    (inputs,) = filter_.call("inputsOf", subscription_id)
    assert (inputs,) == filter_.call("question", proposal_id)
    request = decode_request(inputs)
    assert (request.provider_id, request.endpoint_id, request.model) == (0, 2, MODEL)
    assert request.answer_type == "(bool spam, uint8 confidence)"
    assert [m.role for m in request.messages] == ["system", "user"] and request.messages[1].content == text

    answer_with(double, json.dumps({"spam": True, "confidence": 93}))
    answer = answer_on_chain(http, url, inputs)
    filter_.transact("deliver", subscription_id, node_input(answer), node_output(answer), b"")
    assert filter_.call("verdicts", proposal_id) == (True, True, 93)

    # one verdict per proposal, and none for a subscription it did not make
    for subscription, error in ((subscription_id, "AlreadyJudged(uint256)"), (99, "UnknownSubscription(uint32)")):
        with pytest.raises(RevertedError) as reverted:
            filter_.call("deliver", subscription, b"", node_output(answer), b"")
        assert reverted.value.data.startswith("0x" + selector(error).hex())
