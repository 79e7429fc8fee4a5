"""The Litestar application: the container's HTTP contract, and errors mapped to it."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport
from litestar import Litestar, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.response import Stream

from css_core import __version__
from css_core.codec import encode_result
from css_core.config import Settings, load_settings
from css_core.errors import CSSError, PayloadTooLarge, Unauthorized
from css_core.job import decode_job
from css_core.messages import ErrorBody, JobLocation, OffchainOutput, OnchainOutput
from css_core.openapi import JSON, JSON_OBJECT, RESULT, ServiceOutputOperation, errors
from css_core.plugins import Registry, build_registry
from css_core.resources import SERVICE_ID, is_supported, service_resources
from css_core.workflow import Workflow

__all__ = ("Service", "create_app", "error_response")

TEXT = "text/plain; charset=utf-8"
logger = logging.getLogger("css_core.app")
_encode = msgspec.json.Encoder().encode


class Service:
    """What one worker holds for its lifetime: configuration, providers, HTTP client."""

    def __init__(self, settings: Settings, registry: Registry, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.registry = registry
        self.workflow = Workflow(registry, settings, client)
        self.resources = _encode(service_resources(registry))
        self.index = _encode({
            "service": SERVICE_ID,
            "version": __version__,
            "providers": {p.spec.name: p.served for p in registry.providers},
        })


def error_response(status: int, description: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    body = ErrorBody(code=str(status), name=HTTPStatus(status).phrase, description=description)
    return Response(_encode(body), status_code=status, media_type=JSON, headers=headers)


def _css_error(_: Request[Any, Any, Any], exc: CSSError) -> Response[bytes]:
    logger.log(logging.WARNING if exc.status >= 500 else logging.INFO, "job failed (%d): %s", exc.status, exc.message)
    return error_response(exc.status, exc.message, exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return error_response(exc.status_code, exc.detail, exc.headers)


def _too_large(request: Request[Any, Any, Any], _: HTTPException) -> Response[bytes]:
    limit = _service(request).settings.max_body_bytes
    message = f"the request body is larger than this service's limit of {limit} bytes (CSS_MAX_BODY_BYTES)"
    return _css_error(request, PayloadTooLarge(message))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.error("unexpected error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return error_response(500, "internal error in the service; its log has the details")


def _service(request: Request[Any, Any, Any]) -> Service:
    service: Service = request.app.state.service
    return service


def _bearer_guard(token: str) -> Any:
    """Refuse a request whose `Authorization: Bearer` is not `token` (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = connection.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("missing or wrong `Authorization: Bearer` token (set by the node's container config)")

    return guard


# -- the routes ---------------------------------------------------------------------------------------------


@get("/", media_type=JSON, responses={200: JSON_OBJECT})
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(_service(request).index, media_type=JSON)


@get("/service-resources", media_type=JSON, responses={200: JSON_OBJECT, **errors(401)})
async def resources(request: Request[Any, Any, Any]) -> Response[bytes]:
    service = _service(request)
    model_id = request.query_params.get("model_id")  # read here: Litestar deprecates inferred query params
    if model_id is None:
        return Response(service.resources, media_type=JSON)
    return Response(_encode({"supported": is_supported(service.registry, model_id)}), media_type=JSON)


async def _utf8(chunks: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk.encode()


@post(
    "/service_output",
    status_code=200,
    media_type=JSON,
    operation_class=ServiceOutputOperation,
    responses={
        200: ResponseSpec(RESULT, description="the result, in the shape of the destination (JSON off-chain or "
                          "on-chain, raw text for a stream)", generate_examples=False),
        **errors(400, 401, 413, 502, 503, 504),
    },
)
async def service_output(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    service = _service(request)
    job = decode_job(await request.body(), service.registry, service.settings)
    if job.destination is JobLocation.STREAM:
        chunks = await service.workflow.stream(job.request)
        # the header, not `media_type`: Litestar lets the handler's media type (JSON) override a Stream's
        return Stream(_utf8(chunks), media_type=TEXT, headers={"content-type": TEXT})
    result = await service.workflow.run(job.request)
    if job.destination is JobLocation.ONCHAIN:
        assert isinstance(result, str)  # decode_job refuses embeddings on-chain
        output: Any = OnchainOutput(raw_input=job.raw_input, raw_output=encode_result(result).hex())
    else:
        output = OffchainOutput(result)
    return Response(_encode(output), media_type=JSON)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Litestar:
    """The app of one worker; configuration and plugins are read when it is created."""
    settings = settings or load_settings()
    registry = registry or build_registry(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # httpx's API over aiohttp's connection pool: httpcore's pool cost ~1 ms of CPU per
        # call here (bench/RESULTS.md). aiohttp never retries, so tenacity is the only loop.
        transport = AiohttpTransport(client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        async with httpx.AsyncClient(transport=transport, timeout=settings.request_timeout) as client:
            app.state.service = Service(settings, registry, client)
            yield

    guards = [_bearer_guard(settings.bearer_token)] if settings.bearer_token else []
    return Litestar(
        route_handlers=[index, Router("/", route_handlers=[resources, service_output], guards=guards)],
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        exception_handlers={
            CSSError: _css_error, HTTPException: _http_error, 413: _too_large, Exception: _internal_error
        },
        logging_config=None,
        openapi_config=OpenAPIConfig(title=SERVICE_ID, version=__version__),
    )
