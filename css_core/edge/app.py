"""The Litestar app of one worker: every route of the container's HTTP contract.

Errors are answered in one place, the exception handlers below: every `CSSError` and every
Litestar `HTTPException` becomes the `ErrorBody` JSON node users already parse; a job's error
is logged by its record's one line (`css_core.operations.record`), not here. Every answer
carries its request's id in `x-request-id` (`css_core.operations.request_id`).

With `CSS_BEARER_TOKEN` set, every route but the probes (`/health`, `/ready`) requires it:
`/` (it shows the keys' counts), the OpenAPI schema under `/schema`, `/metrics`,
`/service-resources` and `/service_output`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from litestar import Litestar, Request, Response, Router, asgi, get
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.types import Receive, Scope, Send

from css_core import __version__
from css_core.config import Settings, load_settings
from css_core.edge.health import Readiness
from css_core.edge.openapi import JSON, JSON_OBJECT, document_service_output, errors
from css_core.edge.resources import SERVICE_ID, is_supported, service_resources
from css_core.edge.service_output import ServiceOutput
from css_core.errors import CSSError, Unauthorized
from css_core.jobs.messages import ErrorBody, encode_json
from css_core.jobs.pipeline import Pipeline
from css_core.operations import request_id
from css_core.operations.budget_store import open_budgets
from css_core.operations.metrics import CONTENT_TYPE, Metrics
from css_core.operations.record import Recorder
from css_core.providers.http import ProviderHTTP
from css_core.providers.registry import Registry, build_registry

__all__ = ("Service", "bearer_guard", "create_app")

logger = logging.getLogger("css_core.edge.app")
INTERNAL_ERROR = "internal error in the service; its log has the details"


class Service:
    """What one worker holds for its lifetime: providers, HTTP client, the job route, and what
    operators see of it (readiness, metrics, budgets)."""

    def __init__(self, settings: Settings, registry: Registry, http: ProviderHTTP) -> None:
        self.registry = registry
        self.readiness = Readiness(registry)
        self.metrics = Metrics()
        self.budgets = open_budgets(settings)
        self.recorder = Recorder(registry.providers, self.metrics, self.budgets)
        self.service_output = ServiceOutput(settings, Pipeline(registry, settings, http), self.recorder)
        self.resources = encode_json(service_resources(registry))
        self._index = {
            "service": SERVICE_ID,
            "version": __version__,
            "providers": {p.spec.name: p.served for p in registry.providers},
        }

    @property
    def index(self) -> bytes:
        """`GET /`: what is served, and each provider's keys as this worker sees them now
        (`usable`: neither cooling down after a 429 nor set aside after a refusal)."""
        keys = {p.spec.name: {"total": p.pool.total, "usable": p.pool.usable()} for p in self.registry.providers}
        return encode_json({**self._index, "keys": keys})

    async def metrics_text(self) -> bytes:
        """`GET /metrics`: every worker's series, and the budgets' use read from their store now."""
        families = await self.budgets.families()
        return await asyncio.to_thread(self.metrics.exposition, families)  # reading every worker's files

    async def close(self) -> None:
        self.readiness.close()
        await self.budgets.close()
        self.metrics.close()


# -- errors, answered in one place -------------------------------------------------------------------------


def _error(status: int, description: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    body = encode_json(ErrorBody(code=str(status), name=HTTPStatus(status).phrase, description=description))
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _css_error(_: Request[Any, Any, Any], exc: CSSError) -> Response[bytes]:
    return _error(exc.status, exc.message, exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return _error(exc.status_code, exc.detail, exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.error("unexpected error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return _error(500, INTERNAL_ERROR)


def bearer_guard(token: str) -> Any:
    """A guard refusing a request whose `Authorization` is not `Bearer <token>`.

    The scheme is matched in any case (RFC 9110); the token exactly, in constant time.
    """
    expected = token.encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = next((value for name, value in connection.scope["headers"] if name == b"authorization"), b"")
        scheme, _sep, credentials = given.partition(b" ")
        if not (scheme.lower() == b"bearer") & hmac.compare_digest(credentials.strip(b" "), expected):
            raise Unauthorized("missing or wrong `Authorization: Bearer` token (set by the node's container config)")

    return guard


# -- the routes ---------------------------------------------------------------------------------------------


def _service(request: Request[Any, Any, Any]) -> Service:
    service: Service = request.app.state.service
    return service


@get("/", media_type=JSON, responses={200: JSON_OBJECT, **errors(401)})
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(_service(request).index, media_type=JSON)


@get("/service-resources", media_type=JSON, responses={200: JSON_OBJECT, **errors(401)})
async def resources(request: Request[Any, Any, Any]) -> Response[bytes]:
    service = _service(request)
    model_id = request.query_params.get("model_id")  # read here: Litestar deprecates inferred query params
    if model_id is None:
        return Response(service.resources, media_type=JSON)
    return Response(encode_json({"supported": is_supported(service.registry, model_id)}), media_type=JSON)


_OK = encode_json({"status": "ok"})
_READY = encode_json({"status": "ready"})


@get("/health", media_type=JSON, responses={200: JSON_OBJECT})
async def health() -> Response[bytes]:
    """200 while the worker serves; never calls a provider."""
    return Response(_OK, media_type=JSON)


@get("/ready", media_type=JSON, responses={200: JSON_OBJECT, **errors(503)})
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when the worker should be sent jobs; else 503 saying why (`css_core.edge.health`)."""
    _service(request).readiness.check()
    return Response(_READY, media_type=JSON)


@get("/metrics", media_type=CONTENT_TYPE, responses={
    200: ResponseSpec(str, media_type="text/plain", description="the Prometheus text format",
                      generate_examples=False), **errors(401)})
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every worker's metrics (`css_core.operations.metrics`)."""
    return Response(await _service(request).metrics_text(), media_type=CONTENT_TYPE)


async def _answer_started(message: Any, scope: Any) -> None:
    """Litestar's `before_send` hook, one for every message sent, acting on an answer's start: it
    carries the request's id, and a job the bearer guard refused is counted and logged as a
    job too (`Recorder.answered_before`)."""
    if message["type"] == "http.response.start":
        request_id.add_header(message, scope)
        service: Service | None = getattr(scope["litestar_app"].state, "service", None)
        if service is not None:
            await service.recorder.answered_before(message, scope)


@asgi("/service_output", copy_scope=False)
async def service_output(scope: Scope, receive: Receive, send: Send) -> None:
    """Every job (documented by `openapi.py`)."""
    await scope["litestar_app"].state.service.service_output(scope, receive, send)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Litestar:
    """The app of one worker; configuration and plugins are read when it is created."""
    settings = settings or load_settings()
    registry = registry or build_registry(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with ProviderHTTP(settings, (p.base_url for p in registry.providers)) as http:
            app.state.service = service = Service(settings, registry, http)
            service.readiness.watch_signals()  # uvicorn's handlers are installed by now
            # What start-up built lives as long as the worker: frozen, the collector no longer
            # scans it; a job makes few cycles, so the collector may run less often.
            gc.freeze()
            gc.set_threshold(10_000)
            try:
                yield
            finally:
                await service.close()

    guards = [bearer_guard(settings.bearer_token)] if settings.bearer_token else []
    # Litestar serves the schema from the router it is given: the guard covers it too
    schema = Router("/schema", route_handlers=[], guards=guards, include_in_schema=False)
    app = Litestar(
        route_handlers=[health, ready,
                        Router("/", route_handlers=[index, service_output, resources, metrics], guards=guards)],
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        exception_handlers={CSSError: _css_error, HTTPException: _http_error, Exception: _internal_error},
        before_send=[_answer_started],
        logging_config=None,
        openapi_config=OpenAPIConfig(title=SERVICE_ID, version=__version__, openapi_router=schema),
    )
    document_service_output(app)
    return app
