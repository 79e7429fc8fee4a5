"""The on-chain encoding: what a contract sends, and what its callback receives, with eth-abi.

Input: `abi.encode(["uint8", "uint8", "string", "(string,string)[]"],
[provider_id, endpoint_id, model, [(role, content), ...]])`, byte-compatible with
`infernet_ml.utils.codec.css.encode_css_completion_request`. Endpoint 2 (completions with a
typed answer) adds a fifth field, the answer's Solidity tuple type: `abi.encode(["uint8",
"uint8", "string", "(string,string)[]", "string"], [provider_id, 2, model, messages,
answer_type])`. The endpoint id (the second word) is read first: it says which layout the
rest has. Output: the result as `abi.encode(["string"], [result])` (a typed answer: its
values' own encoding), which the node hands to the contract's callback as
`output = abi.encode(bytes raw_output, bytes processed_output)`.

eth-abi decodes and encodes. What it does not do is done here: refusing data whose offsets
point many times at the same bytes, so that its strings add up to more than the data holds
(`abi.encode` never does that, and a few kB of it would otherwise decode to gigabytes).
"""

from __future__ import annotations

from typing import NamedTuple

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError

from css_core.errors import InvalidJob
from css_core.types import Message

__all__ = (
    "ENDPOINT_IDS",
    "TYPED_ENDPOINT_ID",
    "OnchainRequest",
    "decode_callback_output",
    "decode_hex",
    "decode_request",
    "decode_result",
    "encode_request",
    "encode_result",
)

#: The on-chain endpoint ids: infernet-ml's `CSSEndpoint` (0, 1), and ours, completions with a typed answer (2).
ENDPOINT_IDS: dict[int, str] = {0: "completions", 1: "embeddings", 2: "completions"}
#: The endpoint whose requests carry an answer type (a fifth field).
TYPED_ENDPOINT_ID = 2

_REQUEST = ("uint8", "uint8", "string", "(string,string)[]")
_TYPED_REQUEST = (*_REQUEST, "string")
_SCHEMA = "abi.encode(uint8 provider, uint8 endpoint, string model, (string role, string content)[] messages)"
_TYPED_SCHEMA = _SCHEMA[:-1] + ", string answer_type) (the layout of endpoint 2)"
_TYPED_WORD = TYPED_ENDPOINT_ID.to_bytes(32, "big")


class OnchainRequest(NamedTuple):
    provider_id: int
    endpoint_id: int
    model: str
    messages: tuple[Message, ...]
    answer_type: str | None = None  # endpoint 2's Solidity tuple type; None for the other endpoints


def decode_hex(data: str) -> bytes:
    """The bytes of a hex string, with or without `0x`."""
    text = data.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidJob("on-chain data must be a hex string (with or without 0x) of even length") from None


def _claimed_string_bytes(raw: bytes, typed: bool) -> int:
    """How many bytes of strings the request's offsets and lengths claim (`typed`: the answer type's too).

    Read leniently: a word past the end reads short (as a smaller number), and a string
    that does not fit in the data counts nothing; eth-abi refuses such data itself.
    """

    def word(at: int) -> int:
        return int.from_bytes(raw[at : at + 32], "big")

    def length(at: int) -> int:
        size = word(at)
        return size if at + 32 + size <= len(raw) else 0

    total = length(word(64)) + (length(word(128)) if typed else 0)
    items = word(96) + 32  # the messages' offsets start after their count
    count = min(word(items - 32), max(0, (len(raw) - items) // 32))
    for at in range(items, items + 32 * count, 32):
        pair = items + word(at)
        total += length(pair + word(pair)) + length(pair + word(pair + 32))
    return total


def decode_request(raw: bytes) -> OnchainRequest:
    """Decode an on-chain request in the layout its endpoint id says; any malformed input is an `InvalidJob`.

    Any endpoint id but 2 (an unknown one included, for the caller to name) has the 4-field layout.
    """
    typed = raw[32:64] == _TYPED_WORD
    if (claimed := _claimed_string_bytes(raw, typed)) > len(raw):
        raise InvalidJob(
            f"on-chain data is not what abi.encode produces: its offsets and lengths claim {claimed} bytes "
            f"of strings in {len(raw)} bytes of data"
        )
    try:
        values = abi_decode(_TYPED_REQUEST if typed else _REQUEST, raw)
    except (DecodingError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidJob(f"on-chain data is not {_TYPED_SCHEMA if typed else _SCHEMA}: {exc}") from None
    provider_id, endpoint_id, model, pairs = values[:4]
    messages = tuple(Message(role, content) for role, content in pairs)
    return OnchainRequest(provider_id, endpoint_id, model, messages, values[4] if typed else None)


def decode_result(raw: bytes) -> str:
    """The text of `raw_output` (`abi.encode(["string"], [text])`), as `abi.decode(raw, (string))` reads it."""
    try:
        (text,) = abi_decode(("string",), raw)
    except (DecodingError, UnicodeDecodeError) as exc:
        raise ValueError(f"not abi.encode(string): {exc}") from None
    return str(text)


def decode_callback_output(output: bytes) -> str:
    """The completion in what a contract's `_receiveCompute` gets as `output`.

    The node delivers `output = abi.encode(bytes raw_output, bytes processed_output)`; the
    completion is `raw_output`, itself `abi.encode(string)`.
    """
    try:
        raw, _ = abi_decode(("bytes", "bytes"), output)
    except DecodingError as exc:
        raise ValueError(f"not abi.encode(bytes, bytes): {exc}") from None
    return decode_result(raw)


def encode_request(provider_id: int, endpoint_id: int, model: str, messages: tuple[Message, ...],
                   answer_type: str | None = None) -> bytes:
    """The encoding a contract sends (for tests, examples and clients). `answer_type` (a Solidity
    tuple type) is given for endpoint 2, completions with a typed answer, and only for it."""
    if (endpoint_id == TYPED_ENDPOINT_ID) != (answer_type is not None):
        raise ValueError(
            "endpoint 2 (completions with a typed answer) needs an answer_type, e.g. '(bool approved, string reason)', "
            f"and the other endpoints take none (endpoint {endpoint_id}, answer_type {answer_type!r})"
        )
    pairs = [(message.role, message.content) for message in messages]
    if answer_type is None:
        encoded: bytes = abi_encode(_REQUEST, (provider_id, endpoint_id, model, pairs))
    else:
        encoded = abi_encode(_TYPED_REQUEST, (provider_id, endpoint_id, model, pairs, answer_type))
    return encoded


def encode_result(result: str) -> bytes:
    """A completion as the node hands it on as `raw_output`."""
    encoded: bytes = abi_encode(("string",), (result,))
    return encoded
