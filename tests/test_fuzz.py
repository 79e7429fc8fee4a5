"""Property-based tests: the on-chain codec, the job decoder, and the HTTP API against its OpenAPI schema.

Bounded so that the module runs in seconds: a handful of examples per property (hypothesis
keeps the failures it finds in its database and replays them first).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi.abi import encode
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from css_core.config import load_settings
from css_core.edge.app import Service, create_app
from css_core.errors import CSSError, InvalidJob
from css_core.jobs import codec
from css_core.jobs.pipeline import Pipeline
from css_core.operations.record import JobRecord
from css_core.providers.registry import build_registry
from css_core.types import Message
from tests.test_bad_input import aliased_abi
from tests.test_codec import assert_decodes_as_eth_abi

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = ["uint8", "uint8", "string", "(string,string)[]"]
SETTINGS = load_settings(
    environ={"OPENAI_API_KEY": "k", "GOOSEAI_API_KEY": "k", "PERPLEXITYAI_API_KEY": "k", "CSS_MAX_MESSAGES": "16"},
    dotenv=None,
)
REGISTRY = build_registry(SETTINGS)


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    """The job pipeline of the real app, `create_app(SETTINGS, REGISTRY)`, as its lifespan builds it
    (with the worker's HTTP client); the app is started, but no job is sent through it."""
    app = create_app(SETTINGS, REGISTRY)
    with TestClient(app):
        service: Service = app.state.service
        yield service.service_output.pipeline


# -- the on-chain codec ---------------------------------------------------------------------------------

uint8 = st.integers(min_value=0, max_value=255)
untyped_endpoints = uint8.filter(lambda e: e != codec.TYPED_ENDPOINT_ID)  # endpoint 2's layout has a 5th field
texts = st.text(max_size=80)  # any code point but lone surrogates, which UTF-8 cannot carry
messages = st.lists(st.builds(Message, texts, texts), max_size=6).map(tuple)


@FAST
@given(uint8, untyped_endpoints, texts, messages)
@example(0, 0, "", ())
@example(255, 1, "gpt-4 ✓", (Message("user", "\x00 \U0001f389 " * 40),))
def test_codec_round_trip_is_byte_exact_with_eth_abi(
    provider_id: int, endpoint_id: int, model: str, messages: tuple[Message, ...]
) -> None:
    raw = codec.encode_request(provider_id, endpoint_id, model, messages)
    assert raw == encode(TYPES, [provider_id, endpoint_id, model, [(m.role, m.content) for m in messages]])
    assert codec.decode_request(raw) == codec.OnchainRequest(provider_id, endpoint_id, model, messages)
    assert codec.decode_request(codec.decode_hex("0x" + raw.hex())) == codec.decode_request(raw)


@FAST
@given(texts)
def test_result_encoding_is_byte_exact_with_eth_abi(result: str) -> None:
    assert codec.encode_result(result) == encode(["string"], [result])


def mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    """`raw` with a few 32-byte words overwritten (offsets and lengths made wild), or cut short."""
    words = len(raw) // 32
    wild = st.sampled_from([0, 1, 31, 32, 64, 2**8, 2**32, 2**64, 2**255, 2**256 - 1]) | st.integers(0, len(raw))
    patch = st.tuples(st.integers(0, max(words - 1, 0)), wild)

    def apply(patches: list[tuple[int, int]], cut: int) -> bytes:
        data = bytearray(raw)
        for index, value in patches:
            data[index * 32 : index * 32 + 32] = value.to_bytes(32, "big")
        return bytes(data[:cut])

    return st.builds(apply, st.lists(patch, max_size=3), st.integers(0, len(raw)))


valid_encodings = st.builds(codec.encode_request, uint8, untyped_endpoints, texts, messages) | st.builds(
    codec.encode_request, uint8, st.just(codec.TYPED_ENDPOINT_ID), texts, messages, texts
)


@FAST
@given(st.binary(max_size=600) | valid_encodings.flatmap(mutations))
@example(
    bytes.fromhex(aliased_abi(copies=50, length=992))
)  # a decoding bomb: one string (padded: only the size guard stops it), 100 times
def test_any_bytes_decode_or_are_invalid_jobs(raw: bytes) -> None:
    try:
        decoded = codec.decode_request(raw)
    except InvalidJob:
        return
    strings = [decoded.model, decoded.answer_type or ""]
    strings += [text for m in decoded.messages for text in (m.role, m.content)]
    assert sum(len(s.encode()) for s in strings) <= len(raw)  # never more than the input holds


@settings(FAST, max_examples=300)
@given(st.binary(max_size=600) | valid_encodings.flatmap(mutations))
@example(bytes.fromhex(aliased_abi(copies=50, length=992)))  # the one difference: eth-abi decodes the bomb
@example(bytes.fromhex(aliased_abi(copies=3, length=32)))  # aliased, but small: both decode it
def test_codec_decodes_as_eth_abi_does(raw: bytes) -> None:
    """On these wild words too, `decode_request` refuses what eth-abi refuses and decodes the
    same values from the rest (but for strings adding up to more bytes than the data)."""
    assert_decodes_as_eth_abi(raw)


@FAST
@given(st.text(max_size=80))
def test_any_text_is_hex_or_an_invalid_job(text: str) -> None:
    try:
        raw = codec.decode_hex(text)
    except InvalidJob:
        return
    assert 2 * len(raw) <= len(text)


# -- the job decoder ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
locations = st.integers(-1, 3) | json_values
providers = st.sampled_from(["OPENAI", "openai", "GOOSEAI", "PERPLEXITYAI", "NOPE", ""]) | st.text(max_size=10)
endpoints = st.sampled_from(["completions", "embeddings", ""]) | st.text(max_size=10)
message_objects = st.fixed_dictionaries({"role": texts, "content": texts}) | json_values
requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4", "gpt-neo-20b", "..", "a/b?c"]) | texts},
    optional={
        "provider": providers | json_values,
        "endpoint": endpoints | json_values,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "endpoint": endpoints,
                "messages": st.lists(message_objects, max_size=20) | json_values,
                "input": texts | json_values,
            },
        )
        | json_values,
        "extra_args": st.dictionaries(st.text(max_size=10), json_values, max_size=3) | json_values,
    },
)
onchain_data = (valid_encodings | valid_encodings.flatmap(mutations)).map(lambda raw: raw.hex()) | st.text(max_size=20)
jobs = st.fixed_dictionaries(
    {"source": locations, "destination": locations, "data": requests | onchain_data | json_values},
    optional={"requires_proof": st.booleans() | json_values},
)
bodies = jobs.map(lambda body: json.dumps(body).encode()) | json_values.map(lambda v: json.dumps(v).encode())


@FAST
@given(bodies | st.binary(max_size=200))
def test_any_body_is_a_job_or_a_css_error(pipeline: Pipeline, body: bytes) -> None:
    """What the pipeline's decoding and its choice of the target accept or refuse: only `CSSError`s, never a crash."""
    try:
        job = pipeline.decode(body, JobRecord(None, "fuzz"))
        pipeline.target(job, job.request)
    except CSSError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message


# -- the HTTP API against its own OpenAPI schema -------------------------------------------------------------


def test_api_conforms_to_its_schema(url: str) -> None:
    """Requests made from the schema the running service serves (valid and invalid ones): never a 5xx,
    every answer as the schema declares it. (Driven from hypothesis directly: schemathesis's own pytest
    plugin does not run under pytest 9.)"""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{url}/schema/openapi.json")
    cases = st.one_of([schema.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode])

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def conforms(case: Any) -> None:
        case.call_and_validate(base_url=url, checks=[not_a_server_error, response_schema_conformance])

    conforms()
