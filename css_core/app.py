"""The ASGI app of one worker: Litestar serves and documents the container's HTTP contract;
`POST /service_output`, every job's route, goes to `ServiceOutput` before Litestar routes it."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.types import ASGIApp

from css_core import __version__
from css_core.config import Settings, load_settings
from css_core.errors import CSSError
from css_core.openapi import JSON, JSON_OBJECT, RESULT, ServiceOutputOperation, errors
from css_core.plugins import Registry, build_registry
from css_core.provider_http import ProviderHTTP
from css_core.resources import SERVICE_ID, is_supported, service_resources
from css_core.service_output import (
    INTERNAL_ERROR,
    Receive,
    Scope,
    Send,
    ServiceOutput,
    check_bearer,
    error_response,
    log_failure,
)
from css_core.workflow import Workflow

__all__ = ("Service", "create_app")

logger = logging.getLogger("css_core.app")
_encode = msgspec.json.Encoder().encode


class Service:
    """What one worker holds for its lifetime: configuration, providers, HTTP client."""

    def __init__(self, settings: Settings, registry: Registry, http: ProviderHTTP) -> None:
        self.settings = settings
        self.registry = registry
        self.service_output = ServiceOutput(settings, registry, Workflow(registry, settings, http))
        self.resources = _encode(service_resources(registry))
        self.index = _encode({
            "service": SERVICE_ID,
            "version": __version__,
            "providers": {p.spec.name: p.served for p in registry.providers},
        })


def _error(status: int, description: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    status, body, headers = error_response(status, description, headers)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _css_error(_: Request[Any, Any, Any], exc: CSSError) -> Response[bytes]:
    log_failure(exc)
    return _error(exc.status, exc.message, exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return _error(exc.status_code, exc.detail, exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.error("unexpected error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return _error(500, INTERNAL_ERROR)


def _service(request: Request[Any, Any, Any]) -> Service:
    service: Service = request.app.state.service
    return service


def _bearer_guard(token: str) -> Any:
    """Refuse a request whose `Authorization: Bearer` is not `token`."""
    expected = f"Bearer {token}".encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        check_bearer(connection.scope["headers"], expected)

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
async def service_output(request: Request[Any, Any, Any]) -> ASGIApp:
    # Litestar documents the route; the app in `create_app` hands this exact path straight to
    # `ServiceOutput`, and Litestar routes only what that leaves (such as a trailing slash).
    return cast(ASGIApp, _service(request).service_output)


def _fast_path(litestar: Litestar) -> ASGIApp:
    """`litestar`, with `POST /service_output` handed to `ServiceOutput` before Litestar routes it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/service_output" and scope["method"] == "POST":
            await litestar.state.service.service_output(scope, receive, send)
        else:
            await litestar(scope, receive, send)  # type: ignore[arg-type]

    return cast(ASGIApp, app)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> ASGIApp:
    """The app of one worker; configuration and plugins are read when it is created."""
    settings = settings or load_settings()
    registry = registry or build_registry(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # What start-up built lives as long as the worker: frozen, the collector no longer scans
        # it, and it collects less often. The defaults cost ~95 µs of CPU per job under load
        # (a full collection of Litestar's objects took ~65 ms; bench/RESULTS.md).
        gc.freeze()
        gc.set_threshold(10_000)
        plugin_calls = any("css_call" in p.hooks or "css_call_stream" in p.hooks for p in registry.providers)
        async with ProviderHTTP(settings.request_timeout, plugin_calls) as http:
            app.state.service = Service(settings, registry, http)
            yield

    guards = [_bearer_guard(settings.bearer_token)] if settings.bearer_token else []
    litestar = Litestar(
        # `ServiceOutput` checks the bearer token itself
        route_handlers=[index, service_output, Router("/", route_handlers=[resources], guards=guards)],
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        exception_handlers={CSSError: _css_error, HTTPException: _http_error, Exception: _internal_error},
        logging_config=None,
        openapi_config=OpenAPIConfig(title=SERVICE_ID, version=__version__),
    )
    return _fast_path(litestar)
