"""Typed answers through the core: a job's Solidity tuple type (`params.answer_type` off-chain,
endpoint 2 on-chain) asks the provider for JSON of its schema (`css_encode_answer_format`); the
answer is read against the type inside the attempt (a wrong one retried, never delivered) and
encoded for the destination: an object off-chain, the values' own ABI encoding on-chain.

The provider is `Typed`, an inline plugin (`tests/acme.py`'s OpenAI-compatible Acme with the
hook), in front of the double, whose chat route answers the JSON text each test scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pluggy
import pytest
from eth_abi.abi import decode, encode
from hypothesis import given
from hypothesis import strategies as st

from css_core.errors import InvalidJob
from css_core.jobs.answer_type import AnswerType
from css_core.jobs.codec import OnchainRequest, decode_request, encode_request
from css_core.providers.hookspecs import hookimpl
from css_core.testing import ProviderDouble, Route
from css_core.testing.routes import RecordedRequest
from css_core.types import CSSRequest, Message
from tests.acme import Acme, acme_job, serve_acme
from tests.conftest import assert_error, job, post_job, registered

__all__ = ("serve_acme",)  # the fixture, imported for pytest to find

TRIES = 3  # CSS_REQUEST_TRIES' default
ACME_ID = 70  # Acme's on-chain id
VERDICT = "(bool approved, uint8 confidence, string reason)"
ONCHAIN, OFFCHAIN, STREAM = 0, 1, 2


class Typed(Acme):
    """Acme asking for typed answers with OpenAI's structured outputs; it notes the schemas it was given."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.schemas: list[dict[str, Any]] = []

    @hookimpl
    def css_encode_answer_format(self, request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
        assert request.answer_schema == schema
        self.schemas.append(schema)
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}


def completion(content: str) -> dict[str, Any]:
    """An OpenAI chat completion whose message is `content`."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def script(double: ProviderDouble, *answers: Any) -> None:
    """The chat route answers these JSON values (or texts) in order, the last one from then on."""
    left = [a if isinstance(a, str) else msgspec.json.encode(a).decode() for a in answers]

    def answer(request: RecordedRequest) -> dict[str, Any]:
        return completion(left.pop(0) if len(left) > 1 else left[0])

    double.add_route(Route("POST", r"/chat/completions", answer))


def typed_job(answer_type: str, content: str = "approve?", **fields: Any) -> dict[str, Any]:
    body = acme_job(content, **fields)
    body["data"]["params"]["answer_type"] = answer_type
    return body


def onchain(answer_type: str | None, endpoint: int = 2, destination: int = ONCHAIN) -> dict[str, Any]:
    data = encode_request(ACME_ID, endpoint, "gpt-4", (Message("user", "approve?"),), answer_type).hex()
    return job(data, source=ONCHAIN, destination=destination)


@pytest.fixture
def typed_url(pm: pluggy.PluginManager, serve_acme: Callable[..., str]) -> Any:
    with registered(pm, acme=(plugin := Typed(models=("gpt-4", "gpt-4o")))):
        yield serve_acme(), plugin


# -- off-chain and on-chain answers ---------------------------------------------------------------------------

RICH = ("(bool approved, uint8 confidence, string reason, address to, bytes32 tag, uint256 big, int8[2] pair, "
        "(string name, uint16[] scores) detail)")
ADDRESS = "0x52908400098527886e0f7030069857d2e4169ee7"  # EIP-55's example, lower case
CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"
TAG = "0x" + "ab" * 32
BIG = 2**200 + 1
RICH_ANSWER = {"approved": True, "confidence": 87, "reason": "fine 🎉", "to": ADDRESS, "tag": TAG, "big": str(BIG),
               "pair": [-128, 127], "detail": {"name": "n", "scores": [1, 65535]}}


def test_offchain_typed_job_answers_an_object_of_the_types_names(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client
) -> None:
    url, plugin = typed_url
    script(double, RICH_ANSWER)
    response = post_job(http, url, typed_job(RICH, extra_args={"temperature": 0.2}))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": {
        "approved": True, "confidence": 87, "reason": "fine 🎉", "to": CHECKSUMMED, "tag": TAG, "big": str(BIG),
        "pair": [-128, 127], "detail": {"name": "n", "scores": [1, 65535]},
    }}
    schema = AnswerType.parse(RICH).json_schema()
    assert plugin.schemas == [schema]
    (sent,) = double.requests
    assert sent.json["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert sent.json["temperature"] == 0.2  # the job's options still reach the provider


def test_onchain_endpoint_2_answers_the_values_abi_encoding(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client
) -> None:
    url, _ = typed_url
    script(double, {"approved": True, "confidence": 87, "reason": "looks right"})
    body = onchain(VERDICT)
    response = post_job(http, url, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer == {"raw_input": body["data"], "processed_input": "", "raw_output": answer["raw_output"],
                      "processed_output": "", "proof": ""}
    raw = bytes.fromhex(answer["raw_output"])
    assert decode(["bool", "uint8", "string"], raw) == (True, 87, "looks right")
    assert raw == encode(["bool", "uint8", "string"], [True, 87, "looks right"])


def test_an_offchain_source_delivered_onchain_is_typed_too(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client
) -> None:
    url, _ = typed_url
    script(double, RICH_ANSWER)
    response = post_job(http, url, {**typed_job(RICH), "destination": ONCHAIN})
    assert response.status_code == 200, response.text
    types = ["bool", "uint8", "string", "address", "bytes32", "uint256", "int8[2]", "(string,uint16[])"]
    values = decode(types, bytes.fromhex(response.json()["raw_output"]))
    assert values == (True, 87, "fine 🎉", CHECKSUMMED.lower(), bytes.fromhex(TAG[2:]), BIG, (-128, 127),
                      ("n", (1, 65535)))


def test_endpoints_0_and_1_answer_as_before(double: ProviderDouble, typed_url: tuple[str, Typed],
                                            http: httpx.Client) -> None:
    url, _ = typed_url
    script(double, "plain text")
    response = post_job(http, url, onchain(None, endpoint=0))
    assert response.status_code == 200, response.text
    assert decode(["string"], bytes.fromhex(response.json()["raw_output"])) == ("plain text",)
    assert "response_format" not in double.requests[0].json


# -- a wrong answer is retried, never delivered ---------------------------------------------------------------


@pytest.mark.parametrize("destination", [OFFCHAIN, ONCHAIN])
def test_an_out_of_range_answer_is_retried_then_a_502_naming_the_field(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client, destination: int
) -> None:
    url, _ = typed_url
    script(double, {"approved": True, "confidence": 200, "reason": "sure"})
    body = {**typed_job("(bool approved, int8 confidence, string reason)"), "destination": destination}
    response = post_job(http, url, body)
    assert_error(response, 502, "ACME failed after 3 attempt(s)", "`confidence`", "200", "int8")
    assert len(double.requests) == TRIES


@pytest.mark.parametrize(
    ("wrong", "field"),
    [
        ({"approved": "yes", "confidence": 1, "reason": ""}, "`approved`"),
        ({"approved": True, "reason": ""}, "`confidence`"),
        ({"approved": True, "confidence": 1, "reason": "", "extra": 1}, "`extra`"),
        ("not json", "not JSON"),
    ],
    ids=["wrong-kind", "missing-key", "extra-key", "not-json"],
)
def test_a_wrong_answer_is_retried_and_the_next_one_delivered(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client, wrong: Any, field: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = typed_url
    script(double, wrong, {"approved": False, "confidence": 3, "reason": "no"})
    response = post_job(http, url, typed_job(VERDICT))
    assert response.json() == {"output": {"approved": False, "confidence": 3, "reason": "no"}}, response.text
    assert len(double.requests) == 2
    assert field in caplog.text  # the failed attempt's log line names what was wrong


# -- refused before any provider call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_type", "part"),
    [
        ("(uint7 confidence)", "`uint7`"),
        ("(bool approved, uint8)", "answer_type"),
        ("bool approved", "`bool approved`"),
        ("", "answer_type: empty"),
        ("(bytes data)", "answer_type"),
    ],
)
def test_a_malformed_type_is_a_400_naming_it_before_any_call(
    double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client, answer_type: str, part: str
) -> None:
    url, _ = typed_url
    assert_error(post_job(http, url, typed_job(answer_type)), 400, part)
    assert_error(post_job(http, url, onchain(answer_type)), 400, part)
    assert double.requests == []


def test_a_typed_stream_is_a_400(double: ProviderDouble, typed_url: tuple[str, Typed], http: httpx.Client) -> None:
    url, _ = typed_url
    assert_error(post_job(http, url, {**typed_job(VERDICT), "destination": STREAM}), 400,
                 "a typed answer cannot be streamed")
    assert_error(post_job(http, url, onchain(VERDICT, destination=STREAM)), 400, "a typed answer cannot be streamed")
    assert double.requests == []


def test_only_completions_take_a_typed_answer(double: ProviderDouble, typed_url: tuple[str, Typed],
                                              http: httpx.Client) -> None:
    url, _ = typed_url
    params = {"input": "x", "answer_type": VERDICT}
    data = {"provider": "ACME", "endpoint": "embeddings", "model": "m", "params": params}
    assert_error(post_job(http, url, job(data)), 400, "only completions can have a typed answer")
    assert double.requests == []


def test_hook_css_encode_answer_format_missing_is_a_400_naming_the_provider(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Acme()):
        url = serve_acme()
        assert_error(post_job(http, url, typed_job(VERDICT)), 400,
                     "ACME cannot give typed answers (its plugin does not implement css_encode_answer_format)")
        assert_error(post_job(http, url, onchain(VERDICT)), 400, "ACME cannot give typed answers")
    assert double.requests == []


class Declines(Typed):
    """Gives typed answers, but not for the model `small`."""

    @hookimpl
    def css_encode_answer_format(self, request: CSSRequest) -> dict[str, Any] | None:
        return None if request.model == "small" else {"response_format": {"type": "json_object"}}


def test_hook_css_encode_answer_format_none_is_a_400_naming_the_model(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Declines()):
        url = serve_acme()
        assert_error(post_job(http, url, typed_job(VERDICT, model="small")), 400,
                     "ACME cannot give a typed answer to this job (model 'small')")
        assert double.requests == []
        script(double, {"approved": True, "confidence": 1, "reason": ""})
        assert post_job(http, url, typed_job(VERDICT)).status_code == 200
    assert double.requests[0].json["response_format"] == {"type": "json_object"}


class Nested(Typed):
    """Asks for the typed answer inside an object (`config`) where it also takes its options, as Gemini does."""

    @hookimpl
    def css_encode_answer_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {"config": {"schema": schema, "mime": "application/json"}}

    @hookimpl
    def css_encode_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"config": options}


def test_hook_css_encode_answer_format_options_in_the_same_object_keep_it(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Nested()):
        url = serve_acme()
        script(double, {"approved": True, "confidence": 1, "reason": ""})
        response = post_job(http, url, typed_job(VERDICT, extra_args={"temperature": 0.3, "mime": "text/x"}))
    assert response.status_code == 200, response.text
    schema = AnswerType.parse(VERDICT).json_schema()
    # the job's temperature is kept; its `mime` cannot change the request for a typed answer
    assert double.requests[0].json["config"] == {"schema": schema, "mime": "application/json", "temperature": 0.3}


def test_extra_args_may_not_replace_the_request_for_a_typed_answer(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Typed()):
        url = serve_acme()
        response = post_job(http, url, typed_job(VERDICT, extra_args={"response_format": {"type": "text"}}))
        assert response.status_code == 200, response.text  # an object: merged, the typed request's fields win
        assert_error(post_job(http, url, typed_job(VERDICT, extra_args={"response_format": "text"})), 400,
                     "response_format", "typed")
    assert double.requests[0].json["response_format"]["type"] != "text"
    assert len(double.requests) == 1


# -- /service-resources -----------------------------------------------------------------------------------------


def test_service_resources_lists_the_models_that_take_typed_answers(
    pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Typed(models=("gpt-4", "gpt-4o"))):
        compute = http.get(serve_acme() + "/service-resources").json()["compute_capability"][0]
    assert compute["typed_answers"] == [{"owner": "ACME", "name": "gpt-4"}, {"owner": "ACME", "name": "gpt-4o"}]
    assert compute["models"] == compute["typed_answers"]
    with registered(pm, acme=Acme(models=("gpt-4",))):
        compute = http.get(serve_acme() + "/service-resources").json()["compute_capability"][0]
    assert compute["typed_answers"] == [] and compute["models"] == [{"owner": "ACME", "name": "gpt-4"}]
    assert {"id", "type", "task", "models", "cached_models", "inference_engine", "inference_engine_version"} <= set(
        compute)


# -- the codec's endpoint 2 ---------------------------------------------------------------------------------------

TYPED_LAYOUT = ["uint8", "uint8", "string", "(string,string)[]", "string"]
texts = st.text(max_size=80)
messages = st.lists(st.builds(Message, texts, texts), max_size=5).map(tuple)


@given(st.integers(0, 255), texts, messages, texts)
def test_endpoint_2_round_trips_and_is_eth_abis_5_field_layout(
    provider: int, model: str, conversation: tuple[Message, ...], answer_type: str
) -> None:
    raw = encode_request(provider, 2, model, conversation, answer_type)
    assert raw == encode(TYPED_LAYOUT, [provider, 2, model, [(m.role, m.content) for m in conversation], answer_type])
    assert decode_request(raw) == OnchainRequest(provider, 2, model, conversation, answer_type)


def test_endpoint_2_needs_an_answer_type_and_only_it_takes_one() -> None:
    with pytest.raises(ValueError, match="endpoint 2"):
        encode_request(0, 2, "m", ())
    with pytest.raises(ValueError, match="endpoint 2"):
        encode_request(0, 0, "m", (), VERDICT)
    assert decode_request(encode_request(0, 0, "m", ())).answer_type is None


def test_endpoint_2_in_the_4_field_layout_is_refused() -> None:
    """The endpoint id selects the layout: 4 fields with endpoint 2 miss the answer type."""
    raw = encode(TYPED_LAYOUT[:4], [0, 2, "gpt-4", [("user", "hi")]])
    with pytest.raises(InvalidJob, match=r"on-chain data is not abi\.encode\(.*string answer_type\)"):
        decode_request(raw)


def test_the_offsets_guard_counts_the_answer_type() -> None:
    """The answer type's offset aliasing the model's bytes: eth-abi decodes both, the guard refuses."""
    model = "m" * 4000
    raw = bytearray(encode(TYPED_LAYOUT, [0, 2, model, [], ""]))
    raw[128:160] = raw[64:96]  # the answer type's offset := the model's
    assert decode(TYPED_LAYOUT, bytes(raw))[4] == model
    with pytest.raises(InvalidJob, match=f"claim 8000 bytes of strings in {len(raw)} bytes"):
        decode_request(bytes(raw))
