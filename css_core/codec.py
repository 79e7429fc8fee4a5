"""The on-chain encoding: what a contract sends, and what its callback receives.

Input: `abi.encode(["uint8", "uint8", "string", "(string,string)[]"],
[provider_id, endpoint_id, model, [(role, content), ...]])`, byte-compatible with
`infernet_ml.utils.codec.css.encode_css_completion_request`. Output: the result as
`abi.encode(["string"], [result])`.

This one fixed schema is coded here by hand rather than with eth-abi, whose imports
(eth-utils, pydantic, parsimonious, cytoolz...) cost each worker ~22 MB. The decoder
accepts exactly what `eth_abi.decode` accepts in its default strict mode (tests/test_codec.py
compares the two on mutated encodings), with one exception: data whose offsets make its
strings add up to more bytes than the data holds (`abi.encode` never does that, and a few kB
could otherwise decode to gigabytes).

The layout (every value a 32-byte big-endian word; an offset counts from the start of
the enclosing tuple or array, and points into its tail)::

    0: provider_id   32: endpoint_id   64: offset of model   96: offset of messages
    model:     length, UTF-8 bytes zero-padded to a multiple of 32
    messages:  count, then `count` offsets (from just after the count), one per pair
    pair:      offset of role, offset of content (from the pair's start), then both strings
"""

from __future__ import annotations

from typing import NamedTuple

from css_core.errors import InvalidJob
from css_core.types import Message

__all__ = (
    "ENDPOINT_IDS",
    "OnchainRequest",
    "decode_hex",
    "decode_request",
    "decode_result",
    "encode_request",
    "encode_result",
)

#: The on-chain endpoint ids (infernet-ml's `CSSEndpoint`).
ENDPOINT_IDS: dict[int, str] = {0: "completions", 1: "embeddings"}

_SCHEMA = "abi.encode(uint8 provider, uint8 endpoint, string model, (string role, string content)[] messages)"


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


# -- decoding -------------------------------------------------------------------------------------------


class _Malformed(Exception):
    """Why the data is not the schema's encoding (becomes an `InvalidJob`)."""


def _word(raw: bytes, at: int) -> int:
    if at + 32 > len(raw):
        raise _Malformed(f"it is {len(raw)} bytes long, too short for the 32-byte word at byte {at}")
    return int.from_bytes(raw[at : at + 32], "big")


def _uint8(raw: bytes, at: int, what: str) -> int:
    # eth-abi refuses a word whose 31 high bytes are not zero, rather than truncating it
    if (value := _word(raw, at)) > 0xFF:
        raise _Malformed(f"{what} is {value}, which does not fit a uint8")
    return value


def _pointer(raw: bytes, at: int, frame: int, head_end: int, what: str) -> int:
    # An offset counts from the start (`frame`) of the tuple or array whose head holds it. Like
    # eth-abi, follow it wherever it points (canonical or not, even at bytes that other values
    # share), as long as that is past the head it sits in and inside the data.
    target = frame + _word(raw, at)
    if target < head_end:
        raise _Malformed(
            f"the offset of {what} (at byte {at}) points to byte {target}, inside the head it belongs to "
            f"(bytes {frame}..{head_end})"
        )
    if target >= len(raw):
        raise _Malformed(f"the offset of {what} (at byte {at}) points to byte {target}, past the end ({len(raw)})")
    return target


def _string_span(raw: bytes, at: int, what: str) -> tuple[int, int]:
    """Where the UTF-8 bytes of the string at `at` are, once its length and padding are checked."""
    start = at + 32
    end = start + _word(raw, at)
    padded_end = end + -(end - start) % 32
    if padded_end > len(raw):
        raise _Malformed(f"{what} claims {end - start} bytes at byte {start}, past the end ({len(raw)})")
    if raw.count(0, end, padded_end) != padded_end - end:  # strict, as eth-abi: nothing hidden in the padding
        raise _Malformed(f"the padding after {what} (bytes {end}..{padded_end}) is not zero")
    return start, end


def decode_request(raw: bytes) -> OnchainRequest:
    """Decode an on-chain request; any malformed input is an `InvalidJob`.

    First the offsets, lengths and padding are checked and the strings located, without
    copying them; then, only if those strings fit in the data, they are decoded.
    """
    try:
        provider_id = _uint8(raw, 0, "the provider id")
        endpoint_id = _uint8(raw, 32, "the endpoint id")
        spans = [_string_span(raw, _pointer(raw, 64, 0, 128, "the model"), "the model")]
        items = _pointer(raw, 96, 0, 128, "the messages") + 32  # their offsets start after their count
        count = _word(raw, items - 32)
        if count > (len(raw) - items) // 32:  # checked first, so that a huge count costs nothing
            raise _Malformed(f"it claims {count} messages, but has room for only {(len(raw) - items) // 32} offsets")
        for at in range(items, items + 32 * count, 32):
            pair = _pointer(raw, at, items, items + 32 * count, "a message")
            for field, name in ((pair, "a message's role"), (pair + 32, "a message's content")):
                spans.append(_string_span(raw, _pointer(raw, field, pair, pair + 64, name), name))
    except _Malformed as exc:
        raise InvalidJob(f"on-chain data is not {_SCHEMA}: {exc}") from None
    # Offsets may point at the same bytes many times (eth-abi accepts that); `abi.encode` never
    # claims more string bytes than its own length, and refusing more bounds what we allocate.
    if (claimed := sum(end - start for start, end in spans)) > len(raw):
        raise InvalidJob(
            f"on-chain data is not what abi.encode produces: its offsets and lengths claim {claimed} bytes "
            f"of strings in {len(raw)} bytes of data"
        )
    texts = []
    for start, end in spans:
        try:
            texts.append(raw[start:end].decode())
        except UnicodeDecodeError as exc:
            raise InvalidJob(
                f"on-chain data is not {_SCHEMA}: the string at bytes {start}..{end} is not UTF-8 "
                f"({exc.reason} at byte {start + exc.start})"
            ) from None
    model, roles, contents = texts[0], texts[1::2], texts[2::2]
    messages = tuple(Message(role, content) for role, content in zip(roles, contents, strict=True))
    return OnchainRequest(provider_id, endpoint_id, model, messages)


def decode_result(raw: bytes) -> str:
    """The text of a callback's `abi.encode(["string"], [text])`, as `abi.decode` reads it (for clients)."""
    try:
        start, end = _string_span(raw, _pointer(raw, 0, 0, 32, "the result"), "the result")
        return raw[start:end].decode()
    except (_Malformed, UnicodeDecodeError) as exc:
        raise ValueError(f"not abi.encode(string): {exc}") from None


# -- encoding -------------------------------------------------------------------------------------------


def _uint(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _string(text: str) -> bytes:
    data = text.encode()  # lone surrogates raise UnicodeEncodeError, as with eth-abi
    return _uint(len(data)) + data + bytes(-len(data) % 32)


def encode_request(provider_id: int, endpoint_id: int, model: str, messages: tuple[Message, ...]) -> bytes:
    """The encoding a contract sends (for tests, examples and clients)."""
    for name, value in (("provider_id", provider_id), ("endpoint_id", endpoint_id)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:  # as eth-abi
            raise ValueError(f"{name} must be an int from 0 to 255, not {value!r}")
    pairs = []
    for message in messages:  # a pair: the offsets of its two strings (from its start), then them
        role = _string(message.role)
        pairs.append(_uint(64) + _uint(64 + len(role)) + role + _string(message.content))
    offsets, at = [], 32 * len(pairs)  # each pair's offset counts from the first offset, past them all
    for pair in pairs:
        offsets.append(_uint(at))
        at += len(pair)
    model_bytes = _string(model)
    head = _uint(provider_id) + _uint(endpoint_id) + _uint(128) + _uint(128 + len(model_bytes))
    return b"".join((head, model_bytes, _uint(len(pairs)), *offsets, *pairs))


def encode_result(result: str) -> bytes:
    """A completion as a contract's callback receives it."""
    return _uint(32) + _string(result)
