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


def decode_request(raw: bytes) -> OnchainRequest:
    """Decode an on-chain request; any malformed input is an `InvalidJob`."""
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
