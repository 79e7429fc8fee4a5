"""The on-chain codec: byte-compatible with infernet-ml, round trips, and every malformed
input an `InvalidJob` (a 400), never a crash."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from eth_abi.abi import decode, encode
from hypothesis import given
from hypothesis import strategies as st

from css_core.codec import OnchainRequest, decode_hex, decode_request, encode_request, encode_result
from css_core.errors import InvalidJob
from css_core.types import Message

# infernet_ml.utils.codec.css.encode_css_completion_request(OPENAI, completions, "gpt-4", [user: "hi"])
GOLDEN = (
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000080"
    "00000000000000000000000000000000000000000000000000000000000000c0"
    "0000000000000000000000000000000000000000000000000000000000000005"
    "6770742d34000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000001"
    "0000000000000000000000000000000000000000000000000000000000000020"
    "0000000000000000000000000000000000000000000000000000000000000040"
    "0000000000000000000000000000000000000000000000000000000000000080"
    "0000000000000000000000000000000000000000000000000000000000000004"
    "7573657200000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000002"
    "6869000000000000000000000000000000000000000000000000000000000000"
)

messages = st.lists(st.builds(Message, role=st.text(max_size=20), content=st.text()), max_size=8).map(tuple)


def infernet_ml_encode(provider: int, endpoint: int, model: str, messages: tuple[Message, ...]) -> bytes:
    """What `infernet_ml.utils.codec.css.encode_css_completion_request` does (infernet-ml 2.0)."""
    return encode(["uint8", "uint8", "string", "(string,string)[]"],
                  [provider, endpoint, model, [(m.role, m.content) for m in messages]])


def test_golden_request() -> None:
    raw = encode_request(0, 0, "gpt-4", (Message("user", "hi"),))
    assert raw.hex() == GOLDEN
    assert decode_request(bytes.fromhex(GOLDEN)) == OnchainRequest(0, 0, "gpt-4", (Message("user", "hi"),))


@given(provider=st.integers(0, 255), endpoint=st.integers(0, 255), model=st.text(), messages=messages)
def test_byte_compatible_with_infernet_ml(
    provider: int, endpoint: int, model: str, messages: tuple[Message, ...]
) -> None:
    expected = infernet_ml_encode(provider, endpoint, model, messages)
    assert encode_request(provider, endpoint, model, messages) == expected


@given(provider=st.integers(0, 255), endpoint=st.integers(0, 1), model=st.text(), messages=messages)
def test_round_trip(provider: int, endpoint: int, model: str, messages: tuple[Message, ...]) -> None:
    decoded = decode_request(encode_request(provider, endpoint, model, messages))
    assert decoded == OnchainRequest(provider, endpoint, model, messages)


@pytest.mark.parametrize(
    "conversation",
    [
        (Message("user", "héllo wörld — ünïcödé 中文 العربية"),),
        (Message("user", "🎉🚀👩‍👩‍👧‍👦 emoji, with ZWJ sequences"),),
        (Message("user", ""),),
        (Message("", ""),),
        (),
        tuple(Message("user" if i % 2 else "assistant", f"turn {i} " * i) for i in range(200)),
        (Message("system", "x" * 100_000),),
    ],
    ids=["unicode", "emoji", "empty-content", "empty-role", "no-messages", "200-messages", "100k-content"],
)
def test_round_trip_examples(conversation: tuple[Message, ...]) -> None:
    decoded = decode_request(encode_request(0, 0, "gpt-4o", conversation))
    assert decoded.messages == conversation and decoded.model == "gpt-4o"


@pytest.mark.parametrize("prefix", ["", "0x", "0X"])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_decode_hex_forms(prefix: str, case: Callable[[str], str]) -> None:
    assert decode_hex(prefix + case(GOLDEN)) == bytes.fromhex(GOLDEN)
    assert decode_hex(f"  {prefix}{GOLDEN}\n") == bytes.fromhex(GOLDEN)


@pytest.mark.parametrize("text", ["zz", "abc", "0x123", "0x0x00", "12 34 zz", "ÿÿ"])
def test_invalid_hex_is_invalid_job(text: str) -> None:
    with pytest.raises(InvalidJob, match="hex"):
        decode_hex(text)


def test_empty_hex_is_empty_bytes_and_not_a_request() -> None:
    assert decode_hex("") == b"" == decode_hex("0x")
    with pytest.raises(InvalidJob, match=r"abi\.encode"):
        decode_request(b"")


@pytest.mark.parametrize(
    "raw",
    [
        bytes(31),
        bytes(64),
        bytes.fromhex(GOLDEN)[:-32],  # truncated
        bytes.fromhex(GOLDEN[:-64] + "fffe".ljust(64, "0")),  # content not UTF-8
        bytes.fromhex("00" * 30 + "0101" + GOLDEN[64:]),  # provider id 257 in a uint8 slot
        bytes.fromhex(GOLDEN[: 64 * 2] + "00" * 28 + "ffffffff" + GOLDEN[64 * 3 :]),  # model offset past the end
        b"\xff" * 256,
    ],
    ids=["short", "zeros", "truncated", "not-utf8", "uint8-overflow", "bad-offset", "ones"],
)
def test_garbage_abi_is_invalid_job(raw: bytes) -> None:
    with pytest.raises(InvalidJob, match=r"abi\.encode|not what abi\.encode produces"):
        decode_request(raw)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        decoded = decode_request(raw)
    except InvalidJob:
        return
    assert isinstance(decoded, OnchainRequest)


@given(st.data())
def test_corrupted_requests_never_crash(data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(GOLDEN))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidJob):
        decode_request(bytes(raw))


@given(st.text())
def test_encode_result_decodes_with_eth_abi(text: str) -> None:
    assert decode(["string"], encode_result(text)) == (text,)


def test_encode_result_examples() -> None:
    assert encode_result("").hex() == "20".rjust(64, "0") + "0" * 64
    assert decode(["string"], encode_result("Hello 🎉")) == ("Hello 🎉",)
