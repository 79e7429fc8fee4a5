"""The messages of the container contract, as the node and clients send and receive them."""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any

import msgspec

from css_core.types import Message

__all__ = (
    "ErrorBody",
    "JobInput",
    "JobLocation",
    "OffchainOutput",
    "OffchainRequest",
    "OnchainOutput",
    "Params",
    "encode_json",
)

#: JSON of any message (one encoder, built once, for every answer and log line).
encode_json = msgspec.json.Encoder().encode


class JobLocation(IntEnum):
    ONCHAIN = 0
    OFFCHAIN = 1
    STREAM = 2


class JobInput(msgspec.Struct):
    """The body of `POST /service_output`. `data` is decoded once `source` is known."""

    source: int
    destination: int
    data: msgspec.Raw
    requires_proof: bool | None = False


class Params(msgspec.Struct):
    """`params` of an off-chain request: messages for completions, input for embeddings, and
    for a typed answer its Solidity tuple type, e.g. `(bool approved, uint8 confidence, string reason)`."""

    endpoint: str | None = None
    messages: list[Message] | None = None
    input: str | None = None
    answer_type: Annotated[str | None, msgspec.Meta(
        description="completions only: the answer's Solidity tuple type with named components, e.g. "
                    "`(bool approved, uint8 confidence, string reason)`; the output is then an object of those keys",
    )] = None


class OffchainRequest(msgspec.Struct):
    """The off-chain request object (the `data` of an off-chain job)."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    params: Params
    provider: str | None = None
    endpoint: str | None = None
    extra_args: dict[str, Any] | None = None


class OffchainOutput(msgspec.Struct):
    """A completion's text, an embedding, or a typed answer's object keyed by the type's component names."""

    output: Annotated[str | list[float] | dict[str, Any], msgspec.Meta(
        description="the completion's text, the embedding, or a typed answer's object (integers beyond 2**53 as "
                    "decimal strings, addresses checksummed, bytes32 as 0x hex, arrays as lists, tuples as objects)",
    )]


class OnchainOutput(msgspec.Struct):
    """What the node turns into a contract callback; every field is bare hex."""

    raw_input: str
    raw_output: str
    processed_input: str = ""
    processed_output: str = ""
    proof: str = ""


class ErrorBody(msgspec.Struct):
    """The error shape node users already parse (`code` is a string)."""

    code: str
    name: str
    description: str
