"""The on-chain encoding: what a contract sends, and what its callback receives.

Input: `abi.encode(["uint8", "uint8", "string", "(string,string)[]"],
[provider_id, endpoint_id, model, [(role, content), ...]])`, byte-compatible with
`infernet_ml.utils.codec.css.encode_css_completion_request`. Output: the result as
`abi.encode(["string"], [result])`.
"""

from __future__ import annotations

from typing import NamedTuple

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError

from css_core.errors import InvalidJob
from css_core.types import Message

__all__ = ("ENDPOINT_IDS", "OnchainRequest", "decode_hex", "decode_request", "encode_request", "encode_result")

#: The on-chain endpoint ids (infernet-ml's `CSSEndpoint`).
ENDPOINT_IDS: dict[int, str] = {0: "completions", 1: "embeddings"}

_REQUEST_TYPES = ("uint8", "uint8", "string", "(string,string)[]")


class OnchainRequest(NamedTuple):
    provider_id: int
    endpoint_id: int
    model: str
    messages: tuple[Message, ...]


def decode_hex(data: str) -> bytes:
    """The bytes of a hex string, with or without `0x`."""
    text = data.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidJob("on-chain data must be a hex string (with or without 0x) of even length") from None


def _claimed_string_bytes(raw: bytes) -> int:
    """The bytes the strings of `raw` would decode to, read from its offsets and lengths only.

    ABI offsets may point at the same bytes many times, so a few kB of input could decode
    to gigabytes of strings. What `abi.encode` produces never claims more than its own
    length. An offset outside `raw` counts as 0: `decode` reports it.
    """

    def word(at: int) -> int:
        return int.from_bytes(raw[at : at + 32], "big") if 0 <= at <= len(raw) - 32 else 0

    total = word(word(64))  # the model's length
    frame = word(96) + 32  # the messages: their count, then one offset per (role, content)
    for i in range(min(word(frame - 32), max(0, len(raw) - frame) // 32)):
        pair = frame + word(frame + 32 * i)
        total += word(pair + word(pair)) + word(pair + word(pair + 32))
    return total


def decode_request(raw: bytes) -> OnchainRequest:
    """Decode an on-chain request; any malformed input is an `InvalidJob`."""
    if (claimed := _claimed_string_bytes(raw)) > len(raw):
        raise InvalidJob(
            f"on-chain data is not what abi.encode produces: its offsets and lengths claim {claimed} bytes "
            f"of strings in {len(raw)} bytes of data"
        )
    try:
        provider_id, endpoint_id, model, pairs = decode(_REQUEST_TYPES, raw)
    except (DecodingError, ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise InvalidJob(
            "on-chain data is not abi.encode(uint8 provider, uint8 endpoint, string model, "
            f"(string role, string content)[] messages): {exc}"
        ) from None
    return OnchainRequest(provider_id, endpoint_id, model, tuple(Message(role, content) for role, content in pairs))


def encode_request(provider_id: int, endpoint_id: int, model: str, messages: tuple[Message, ...]) -> bytes:
    """The encoding a contract sends (for tests, examples and clients)."""
    return encode(_REQUEST_TYPES, [provider_id, endpoint_id, model, [(m.role, m.content) for m in messages]])


def encode_result(result: str) -> bytes:
    """A completion as a contract's callback receives it."""
    return encode(("string",), [result])
