"""The OpenAPI description of the app (served at /schema/openapi.json).

`/service_output` reads its raw body, so Litestar cannot infer what to document; this
module says it, for clients and for the schemathesis run in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, Literal

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)

from css_core.messages import ErrorBody, OffchainOutput, OffchainRequest, OnchainOutput

__all__ = ("JSON_OBJECT", "RESULT", "ServiceOutputOperation", "errors")

JSON = "application/json"


class _JobBody(msgspec.Struct):
    """The body of `POST /service_output` as the schema shows it; the handler decodes it itself (`decode_job`)."""

    source: Annotated[Literal[0, 1], msgspec.Meta(description="0: on-chain (`data` is hex), 1: off-chain")]
    destination: Annotated[Literal[0, 1, 2], msgspec.Meta(description="0: on-chain, 1: off-chain, 2: stream")]
    data: OffchainRequest | Annotated[str, msgspec.Meta(
        pattern="^(0x)?([0-9a-fA-F]{2})*$",
        description="on-chain: abi.encode(uint8 provider, uint8 endpoint, string model, (string,string)[]), as hex",
    )]
    requires_proof: bool | None = False


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """A JSON Schema with its `$ref`s to `definitions` replaced by what they name (there are no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(definitions[node["$ref"].rsplit("/", 1)[1]], definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, definitions) for value in node]
    return node


@dataclass
class ServiceOutputOperation(Operation):
    """`/service_output` reads its raw body (one msgspec decode, this service's own error messages), so
    Litestar sees no `data` to describe: the request body, the stream's media type and `Retry-After` are
    added here."""

    def __post_init__(self) -> None:
        (job,), definitions = msgspec.json.schema_components([_JobBody])
        job = _inline(job, definitions)
        schema = Schema(type=OpenAPIType.OBJECT, properties=job["properties"], required=job["required"])
        self.request_body = RequestBody(content={JSON: OpenAPIMediaType(schema=schema)}, required=True)
        responses = self.responses or {}
        if (ok := responses.get("200")) is not None and not isinstance(ok, Reference) and ok.content:
            ok.content["text/plain"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
        if (busy := responses.get("503")) is not None and not isinstance(busy, Reference):
            busy.headers = {"Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), required=True)}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(ErrorBody, description=f"{HTTPStatus(status).phrase}: `description` says why",
                             generate_examples=False)
        for status in statuses
    }


JSON_OBJECT = ResponseSpec(dict[str, Any], description="a JSON object", generate_examples=False)
RESULT: Any = OffchainOutput | OnchainOutput  # documented as `oneOf` (ResponseSpec's type hints miss unions)
