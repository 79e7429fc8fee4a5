"""Byte compatibility with `infernet_ml.utils.codec.css` (infernet-ml from PyPI).

Contracts and their users build on-chain requests with infernet-ml; the service must read
exactly those bytes, and what it encodes must read back the same with infernet-ml. Run
by `nox -s compat`, which installs infernet-ml; elsewhere this module is skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytest.importorskip("infernet_ml", reason="the compat suite needs infernet-ml (nox -s compat installs it)")

import eth_abi
import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from infernet_ml.utils.codec.css import (
    CSSEndpoint,
    CSSProvider,
    decode_css_completion_request,
    decode_css_request,
    encode_css_completion_request,
)
from infernet_ml.utils.css_mux import ConvoMessage

from css_core.jobs import codec
from css_core.testing import ProviderDouble
from css_core.types import Message

# -- the cases ------------------------------------------------------------------------------------


class Case(NamedTuple):
    provider: CSSProvider
    endpoint: CSSEndpoint
    model: str
    messages: list[tuple[str, str]]


HI = [("user", "hi")]
CASES: dict[str, Case] = {
    "ascii": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4", HI),
    "system-and-user": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4o",
                            [("system", "You are terse."), ("user", "What is 2+2?")]),
    "unicode": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                    [("user", "héllo wörld ¿qué tal? Ω≈ç√∫")]),
    "emoji": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                  [("user", "🦀🐍 👩‍👩‍👧‍👦 🏳️‍🌈 flags 🇯🇵")]),
    "cjk": Case(CSSProvider.PERPLEXITYAI, CSSEndpoint.completions, "sonar",
                [("user", "你好\uff0c世界。日本語のテキスト。한국어 문장.")]),
    "rtl-and-combining": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                              [("user", "مرحبا بالعالم e\u0301 a\u0308 \u200b\u200d")]),
    "control-characters": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                               [("user", "tab\tnewline\nnul\x00bell\x07 end")]),
    "empty-content": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4", [("user", "")]),
    "empty-role": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4", [("", "no role")]),
    "no-messages": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4", []),
    "empty-model": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "", HI),
    "exactly-32-bytes": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "m" * 32, [("user", "x" * 32)]),
    "33-bytes": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "m" * 33, [("user", "x" * 33)]),
    "long-content": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                         [("user", "The quick brown fox jumps over the lazy dog. " * 2000)]),
    "long-unicode-content": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4", [("user", "日本🦀" * 5000)]),
    "many-messages": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                          [("user" if i % 2 == 0 else "assistant", f"turn {i}: {'ab' * i}") for i in range(200)]),
    "gooseai": Case(CSSProvider.GOOSEAI, CSSEndpoint.completions, "gpt-neo-20b", [("user", "Once upon a time")]),
    "perplexityai": Case(CSSProvider.PERPLEXITYAI, CSSEndpoint.completions, "sonar-pro", HI),
    "embeddings-openai": Case(CSSProvider.OPENAI, CSSEndpoint.embeddings, "text-embedding-3-small",
                              [("user", "embed me")]),
    "embeddings-goose": Case(CSSProvider.GOOSEAI, CSSEndpoint.embeddings, "gpt-j-6b", HI),
    "embeddings-perplexity": Case(CSSProvider.PERPLEXITYAI, CSSEndpoint.embeddings, "sonar", HI),
    "model-with-slashes-and-colons": Case(CSSProvider.OPENAI, CSSEndpoint.completions,
                                          "ft:gpt-4o-mini:org/custom:suffix@v1#2", HI),
    "model-with-spaces-quotes": Case(CSSProvider.OPENAI, CSSEndpoint.completions, ' "quoted" \'m\' \\ ', HI),
    "model-unicode": Case(CSSProvider.PERPLEXITYAI, CSSEndpoint.completions, "модель-🤖-模型", HI),
    "model-control-characters": Case(CSSProvider.GOOSEAI, CSSEndpoint.completions, "a\x00b\nc\td", HI),
    "json-in-content": Case(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                            [("user", '{"role": "system", "content": "0xdeadbeef"}')]),
}


def _theirs(case: Case) -> bytes:
    messages = [ConvoMessage(role=role, content=content) for role, content in case.messages]
    return encode_css_completion_request(case.provider, case.endpoint, case.model, messages)


def _ours(case: Case) -> bytes:
    messages = tuple(Message(role, content) for role, content in case.messages)
    return codec.encode_request(int(case.provider), int(case.endpoint), case.model, messages)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_same_bytes(case: Case) -> None:
    assert _ours(case) == _theirs(case)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_we_decode_theirs(case: Case) -> None:
    decoded = codec.decode_request(_theirs(case))
    assert decoded.provider_id == case.provider
    assert decoded.endpoint_id == case.endpoint
    assert decoded.model == case.model
    assert [(m.role, m.content) for m in decoded.messages] == case.messages


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_they_decode_ours(case: Case) -> None:
    ours = _ours(case)
    assert decode_css_request(ours) == (case.provider, case.endpoint)
    model, messages = decode_css_completion_request(ours)
    assert model == case.model
    assert [(m.role, m.content) for m in messages] == case.messages


def test_provider_and_endpoint_ids_match_infernet_ml() -> None:
    from css_core.config import load_settings
    from css_core.providers.registry import build_registry

    # infernet-ml's endpoints, and ours (2: completions with a typed answer)
    assert {e.value: e.name for e in CSSEndpoint} | {2: "completions"} == codec.ENDPOINT_IDS
    registry = build_registry(load_settings(environ={}, dotenv=None))
    for provider in CSSProvider:
        assert registry.by_onchain_id(provider.value).spec.name == provider.name


@pytest.mark.parametrize("text", ["", "hi", "Hello from gpt-4: hi", "日本🦀" * 300, "a\x00b", "x" * 32, "y" * 33])
def test_result_decodes_with_eth_abi(text: str) -> None:
    raw = codec.encode_result(text)
    assert eth_abi.decode(["string"], raw) == (text,)
    assert eth_abi.decode(["string"], bytes.fromhex(raw.hex())) == (text,)


# -- a property: any conversation round-trips both ways --------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=200)


@settings(max_examples=300, deadline=None)
@given(
    provider=st.integers(0, 255),
    endpoint=st.sampled_from(list(CSSEndpoint)),
    model=_text,
    pairs=st.lists(st.tuples(_text, _text), max_size=12),
)
def test_round_trip_property(provider: int, endpoint: CSSEndpoint, model: str, pairs: list[tuple[str, str]]) -> None:
    # infernet-ml types `provider` as its enum, but encodes any uint8: plugins bring new ids.
    theirs = encode_css_completion_request(provider, endpoint, model,  # type: ignore[arg-type]
                                           [ConvoMessage(role=r, content=c) for r, c in pairs])
    ours = codec.encode_request(provider, int(endpoint), model, tuple(Message(r, c) for r, c in pairs))
    assert ours == theirs
    decoded = codec.decode_request(theirs)
    assert (decoded.provider_id, decoded.endpoint_id, decoded.model) == (provider, endpoint, model)
    assert [(m.role, m.content) for m in decoded.messages] == pairs
    their_model, their_messages = decode_css_completion_request(ours)
    assert their_model == model
    assert [(m.role, m.content) for m in their_messages] == pairs


# -- end to end: the real command line in front of the provider double -----------------------------

KEY = "sk-compat"
_SERVICE_PREFIXES = ("OPENAI_", "PERPLEXITYAI_", "GOOSEAI_", "CSS_", "RETRY_PARAMS")


class Running(NamedTuple):
    url: str
    double: ProviderDouble


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command() -> list[str]:
    script = Path(sys.executable).with_name("css-inference-service")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from css_core.edge.cli import main; main(sys.argv[1:])"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`css-inference-service --bind=127.0.0.1:PORT --workers=2`, as the node starts it."""
    workdir = tmp_path_factory.mktemp("service")  # an empty directory: no .env is read
    with ProviderDouble(api_key=KEY) as double:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}
        for name, base in (("OPENAI", "/v1"), ("PERPLEXITYAI", ""), ("GOOSEAI", "/v1")):
            env[f"{name}_API_KEY"] = KEY
            env[f"{name}_BASE_URL"] = double.url + base
        env.update(CSS_REQUEST_TRIES="1", CSS_REQUEST_TIMEOUT="10")
        port = _free_port()
        log = (workdir / "service.log").open("w+")
        process = subprocess.Popen([*_command(), f"--bind=127.0.0.1:{port}", "--workers=2"], env=env, cwd=workdir,
                                   stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the service did not start (exit {process.poll()}):\n{log.read()}")
                try:
                    if httpx.get(url + "/", timeout=1, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield Running(url, double)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _job(running: Running, data: Any, destination: int, source: int = 0) -> httpx.Response:
    body = {"source": source, "destination": destination, "data": data, "requires_proof": False}
    return httpx.post(running.url + "/service_output", json=body, timeout=30, trust_env=False)


E2E = {
    "openai": (CSSProvider.OPENAI, "gpt-4", [ConvoMessage(role="user", content="hi")]),
    "openai-unicode-conversation": (CSSProvider.OPENAI, "gpt-4o", [
        ConvoMessage(role="system", content="Réponds en français 🇫🇷"),
        ConvoMessage(role="user", content="日本語で答えて 🦀"),
    ]),
    "perplexityai": (CSSProvider.PERPLEXITYAI, "sonar", [ConvoMessage(role="user", content="¿qué tal?")]),
    "gooseai": (CSSProvider.GOOSEAI, "gpt-neo-20b", [ConvoMessage(role="user", content="Once upon a time")]),
}


@pytest.mark.parametrize("prefix", ["", "0x"], ids=["bare-hex", "0x-hex"])
@pytest.mark.parametrize("name", E2E.keys())
def test_onchain_job_from_infernet_ml_encoding(running: Running, name: str, prefix: str) -> None:
    provider, model, messages = E2E[name]
    encoded = encode_css_completion_request(provider, CSSEndpoint.completions, model, messages)
    expected = running.double.expected_reply(model, messages[-1].content)

    response = _job(running, prefix + encoded.hex(), destination=0)

    assert response.status_code == 200, response.text
    output = response.json()
    assert set(output) == {"raw_input", "processed_input", "raw_output", "processed_output", "proof"}
    assert output["raw_input"] == encoded.hex()
    assert (output["processed_input"], output["processed_output"], output["proof"]) == ("", "", "")
    assert eth_abi.decode(["string"], bytes.fromhex(output["raw_output"])) == (expected,)
    sent = running.double.requests[-1].json
    if provider is CSSProvider.GOOSEAI:
        assert sent["prompt"] == messages[0].content
    else:
        assert sent["model"] == model
        assert sent["messages"] == [{"role": m.role, "content": m.content} for m in messages]


def test_onchain_source_offchain_destination(running: Running) -> None:
    encoded = encode_css_completion_request(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                                            [ConvoMessage(role="user", content="hi 🦀")])
    response = _job(running, encoded.hex(), destination=1)
    assert response.status_code == 200, response.text
    assert response.json() == {"output": running.double.expected_reply("gpt-4", "hi 🦀")}


def test_onchain_source_stream_destination(running: Running) -> None:
    encoded = encode_css_completion_request(CSSProvider.OPENAI, CSSEndpoint.completions, "gpt-4",
                                            [ConvoMessage(role="user", content="stream 你好")])
    body = {"source": 0, "destination": 2, "data": encoded.hex(), "requires_proof": False}
    with httpx.stream("POST", running.url + "/service_output", json=body, timeout=30, trust_env=False) as response:
        assert response.status_code == 200
        text = b"".join(response.iter_bytes()).decode()
    assert text == running.double.expected_reply("gpt-4", "stream 你好")


def test_onchain_embeddings_request_is_refused_as_json(running: Running) -> None:
    encoded = encode_css_completion_request(CSSProvider.OPENAI, CSSEndpoint.embeddings, "text-embedding-3-small",
                                            [ConvoMessage(role="user", content="embed me")])
    response = _job(running, encoded.hex(), destination=0)
    assert response.status_code == 400
    assert response.json()["code"] == "400"
