"""The OpenAPI description of `POST /service_output` (served at /schema/openapi.json with the rest).

Litestar documents the routes it infers; the job route is a lean `@asgi` handler that reads
its raw body itself, so its operation is described here, from the same msgspec structs that
decode and encode its messages, and added to the app's schema once at start-up.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    PathItem,
    RequestBody,
    Schema,
)

from css_core.jobs.messages import ErrorBody, OffchainOutput, OffchainRequest, OnchainOutput

__all__ = ("JSON", "JSON_OBJECT", "document_service_output", "errors")

JSON = "application/json"
_STATUSES = (400, 401, 413, 415, 500, 502, 503, 504)


class _JobBody(msgspec.Struct):
    """The body of `POST /service_output` as the schema shows it; the handler decodes it itself (`decode_job`)."""

    source: Annotated[Literal[0, 1], msgspec.Meta(description="0: on-chain (`data` is hex), 1: off-chain")]
    destination: Annotated[Literal[0, 1, 2], msgspec.Meta(description="0: on-chain, 1: off-chain, 2: stream")]
    data: OffchainRequest | Annotated[str, msgspec.Meta(
        pattern="^(0x)?([0-9a-fA-F]{2})*$",
        description="on-chain: abi.encode(uint8 provider, uint8 endpoint, string model, (string,string)[]), as hex; "
                    "endpoint 2 (completions with a typed answer) adds a fifth field, string answer_type",
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


def _schema(type_: Any) -> Schema:
    """An object's schema from its msgspec struct, inlined."""
    (schema,), definitions = msgspec.json.schema_components([type_])
    schema = _inline(schema, definitions)
    return Schema(type=OpenAPIType.OBJECT, properties=schema["properties"], required=schema.get("required", []))


def _operation() -> Operation:
    error = OpenAPIMediaType(schema=_schema(ErrorBody))
    responses = {
        "200": OpenAPIResponse(
            description="the result, in the shape of the destination (JSON off-chain or on-chain, raw text for a "
                        "stream)",
            content={JSON: OpenAPIMediaType(schema=Schema(one_of=[_schema(OffchainOutput), _schema(OnchainOutput)])),
                     "text/plain": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))},
        ),
        **{str(status): OpenAPIResponse(description=f"{HTTPStatus(status).phrase}: `description` says why",
                                        content={JSON: error}) for status in _STATUSES},
    }
    responses["503"].headers = {"Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), required=True)}
    return Operation(
        operation_id="ServiceOutput",
        summary="Run one job",
        request_body=RequestBody(content={JSON: OpenAPIMediaType(schema=_schema(_JobBody))}, required=True),
        responses=responses,  # type: ignore[arg-type]
    )


def document_service_output(app: Litestar) -> None:
    """Add `POST /service_output` to the app's OpenAPI schema."""
    app.openapi_schema.paths = {**(app.openapi_schema.paths or {}), "/service_output": PathItem(post=_operation())}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(ErrorBody, description=f"{HTTPStatus(status).phrase}: `description` says why",
                             generate_examples=False)
        for status in statuses
    }


JSON_OBJECT = ResponseSpec(dict[str, Any], description="a JSON object", generate_examples=False)
