"""The workflow: one job from a `CSSRequest` to its result, or to its stream of text.

It knows no provider by name. It asks the registry for the provider's plugin, has the
plugin encode the call, sends it with retries and the job's deadline, and has the plugin
read the answer (or each streamed event). The attempts at one provider, with their keys
and retry strategies, are `css_core.attempts`'.

A job its provider could not answer (it failed after its retries, refused every key, is
not served here, or every key is cooling down) falls back to the targets of
`CSS_FALLBACKS`, in order, within the same deadline; a stream only before its first text.
A request the provider rejected as bad, or a passed deadline, does not fall back. The
chain is looked up only once a job has failed, and followed once (a target's own
fallbacks are not). The answer names who served it (`Served`, `Streamed`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import msgspec

from css_core.attempts import JobAttempts, KeysCooling, events_of
from css_core.budgets import OverBudget
from css_core.config import Settings
from css_core.errors import (
    CSSError,
    InvalidJob,
    PluginFailed,
    ProviderBadResponse,
    ProviderFailed,
    ProviderHTTPError,
    ProviderNotAvailable,
    ProviderUnreachable,
    ServiceBusy,
)
from css_core.metrics import outcome_of
from css_core.plugins import Provider, Registry
from css_core.provider_http import ProviderHTTP
from css_core.record import current
from css_core.retry import retrying
from css_core.routing import fall_back
from css_core.streamed import Streamed, close_events
from css_core.types import CSSRequest, ProviderCall, Result

__all__ = ("Served", "Streamed", "Workflow")

T = TypeVar("T")
_clock = time.perf_counter
logger = logging.getLogger("css_core.workflow")

# what could take a path out of the provider's base URL: a query, a fragment, a backslash,
# controls and spaces, or a "." / ".." segment, written plainly or percent-encoded (the
# HTTP client normalises `%2e%2e` to `..` and resolves it)
_UNSAFE_PATH = re.compile(r"[?#\\\x00-\x20\x7f]|(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)


class _NotServed(ProviderNotAvailable):
    """The provider is installed, but this node does not serve it (its key is not set)."""


# how a job ends when another provider might still answer it (a ProviderTimeout excepted)
_FALLS_BACK = (ProviderFailed, ServiceBusy, PluginFailed, _NotServed, OverBudget)


class Served(NamedTuple):
    """A job's result, and the provider and model that answered it."""

    result: Result
    provider: Provider
    model: str


def _url(provider: Provider, call: ProviderCall) -> str:
    """The plugin's path and query below the provider's base URL, refused if a job's value in
    them could leave it."""
    path, query = call.path, call.query
    if _UNSAFE_PATH.search(path) or any(_UNSAFE_PATH.search(f"{k}={v}") for k, v in query.items()):
        raise InvalidJob(f"the request would change the provider's URL ({path!r}); check the model name")
    path = path if path.startswith("/") else "/" + path
    return provider.base_url + path + ("?" + urlencode(query) if query else "")


class Workflow:
    """Runs jobs for one worker, with its pooled HTTP client; reports each job's attempts,
    waits and fallbacks to its record (`css_core.record`), which also admits it to its budgets
    per provider and model, so a job over budget can fall back."""

    def __init__(self, registry: Registry, settings: Settings, http: ProviderHTTP) -> None:
        self.registry = registry
        self.settings = settings
        self.http = http
        self.fallbacks = registry.fallbacks
        self._retrying: dict[tuple[str, bool], Any] = {}
        for provider in registry.providers:
            for stream, deadline in ((False, settings.job_deadline), (True, settings.stream_deadline)):
                statuses = provider.spec.retryable_statuses
                self._retrying[provider.spec.name, stream] = retrying(settings.retry, statuses, deadline)

    def prepare(self, request: CSSRequest) -> tuple[JobAttempts, str, bytes]:
        """Check the job against its provider; the provider request's URL and body."""
        provider = self.registry.by_name(request.provider)
        spec = provider.spec
        if not provider.served:
            reason = provider.unavailable_reason()
            raise _NotServed(f"provider {spec.name} is not served by this node: {reason}")
        if request.endpoint not in spec.endpoints:
            raise InvalidJob(
                f"{spec.name} has no {request.endpoint!r} endpoint (it serves: {', '.join(spec.endpoints)})"
            )
        if request.stream and not provider.streams:
            raise InvalidJob(f"{spec.name} cannot stream: its plugin does not implement css_parse_stream_event")
        if reserved := sorted(request.extra_args.keys() & spec.job_fields):
            raise InvalidJob(
                f"`extra_args` may not set {', '.join(reserved)}: {spec.name}'s request builds "
                f"{', '.join(sorted(spec.job_fields))} from the job itself"
            )
        job = JobAttempts(provider, request)
        call = job.plugin_step(provider.hooks.encode_params, "encoding of the request", reading=False,
                               request=request)
        if call is None:
            raise InvalidJob(f"{spec.name} cannot encode a {request.endpoint!r} request")
        body = call.body
        if options := {**provider.options, **request.extra_args}:
            placed = job.plugin_step(provider.hooks.encode_options, "encoding of the options", reading=False,
                                     request=request, options=options)
            body = {**body, **(options if placed is None else placed)}
        job.url, job.content = _url(provider, call), msgspec.json.encode(body)
        return job, job.url, job.content

    def _job(self, request: CSSRequest, deadline_at: float, more: bool | None = None) -> JobAttempts:
        """The job, prepared for its attempts; `more`: whether fallbacks follow it (None: its own)."""
        job = self.prepare(request)[0]
        job.deadline_at, job.fallbacks, job.more = deadline_at, self.fallbacks, more
        return job

    def _fall_back(
        self, request: CSSRequest, failure: CSSError, deadline_at: float, serve: Callable[[JobAttempts], Awaitable[T]]
    ) -> Awaitable[tuple[T, JobAttempts]]:
        """The job at its fallbacks, once its own provider failed with `failure`."""

        async def start(redirected: CSSRequest, more: bool) -> tuple[T, JobAttempts]:
            job = self._job(redirected, deadline_at, more)
            return await serve(job), job

        return fall_back(self.registry, request, failure, start)

    def _occupy(self, provider: Provider) -> None:
        """Take one of the provider's in-flight slots; when none is left, answer 503 at once."""
        if provider.in_flight >= self.settings.max_in_flight:
            raise ServiceBusy(
                f"{provider.spec.name} already has {provider.in_flight} calls in flight on this worker "
                "(CSS_MAX_IN_FLIGHT); retry shortly"
            )
        provider.in_flight += 1

    async def _attempts(self, job: JobAttempts, attempt: Callable[[], Awaitable[T]], stream: bool) -> T:
        """The attempts at one provider, in one of its in-flight slots. A stream keeps its slot
        once it has started: the stream frees it when it ends.

        The first attempt is made before tenacity's loop (a job copies the retry policy only
        once it needs it); when it fails, its failure is the loop's first outcome, so the
        policy decides what follows it as it decides for every later attempt."""
        provider = job.provider
        record = current()
        self._occupy(provider)
        held = False
        sent_at: float | None = None

        async def one() -> T:
            nonlocal sent_at, held
            sent_at = _clock()
            try:
                result = await attempt()
            except Exception as exc:
                record.attempt(outcome_of(exc), _clock() - sent_at)
                sent_at = None
                job.note(exc)
                raise
            record.attempt("ok", _clock() - sent_at)
            held = stream
            return result

        try:
            async with asyncio.timeout_at(job.deadline_at):
                if provider.pool.paused:
                    await job.admit()
                await record.admit(provider.spec.name, job.request.model)  # budgets: 429 before any call
                try:
                    return await one()
                except Exception as exc:
                    first: Exception | None = exc
                controller = job.controller(self._retrying[provider.spec.name, stream], self.settings.retry)
                async for try_ in controller:
                    with try_:
                        if first is not None:
                            failed, first = first, None
                            raise failed
                        return await one()
        except TimeoutError as exc:
            if sent_at is not None:  # the deadline passed during an attempt
                record.attempt("timeout", _clock() - sent_at)
            raise job.failure(exc) from None
        except (ProviderHTTPError, ProviderBadResponse, ProviderUnreachable, KeysCooling) as exc:
            raise job.failure(exc) from None
        finally:
            if not held:
                provider.in_flight -= 1
        raise AssertionError("tenacity ended without a result or an exception")  # pragma: no cover

    # -- a job's result ---------------------------------------------------------------------------------------

    def _result(self, job: JobAttempts) -> Awaitable[Result]:
        """The attempts of a job at one provider, until one has the result."""
        provider, request, timeout = job.provider, job.request, self.settings.request_timeout
        hooks, spec, client = provider.hooks, provider.spec, self.http.client
        transport = self.http.transport_for(provider.base_url)

        async def attempt() -> Result:
            try:
                body = await hooks.call(spec=spec, call=job.call(timeout), client=client, transport=transport)
            except Exception as exc:
                raise job.attempt_failure(exc) from None
            result: Result | None = job.plugin_step(hooks.postprocess, "answer", request=request, body=body)
            if result is None:
                raise ProviderBadResponse("the answer holds no result")
            job.read_usage(body)
            return result

        return self._attempts(job, attempt, False)

    async def run(self, request: CSSRequest) -> Served:
        """The job's result (a completion or an embedding), and who answered it."""
        deadline_at = asyncio.get_running_loop().time() + self.settings.job_deadline
        try:
            job = self._job(request, deadline_at)
            result = await self._result(job)
        except _FALLS_BACK as exc:
            result, job = await self._fall_back(request, exc, deadline_at, self._result)
        await job.report_usage()
        return Served(result, job.provider, job.request.model)

    # -- a job's stream ---------------------------------------------------------------------------------------

    async def stream(self, request: CSSRequest) -> Streamed:
        """The job's stream, once its first text has arrived, and who serves it.

        Failures before the first text are retried (and fall back) and raised from this
        coroutine, so the caller can still answer with an error status. After it, a failure
        ends the iteration with an exception, which the server turns into an aborted response.
        """
        deadline_at = asyncio.get_running_loop().time() + self.settings.stream_deadline
        try:
            job = self._job(request, deadline_at)
            upstream, first = await self._stream_start(job)
        except _FALLS_BACK as exc:
            (upstream, first), job = await self._fall_back(request, exc, deadline_at, self._stream_start)
        return Streamed(job, upstream, first)

    def _stream_start(self, job: JobAttempts) -> Awaitable[tuple[AsyncIterator[Any], str]]:
        """The attempts of a stream at one provider, until one yields its first text."""
        provider, timeout = job.provider, self.settings.request_timeout
        hooks, spec, client = provider.hooks, provider.spec, self.http.client
        transport = self.http.transport_for(provider.base_url)

        async def attempt() -> tuple[AsyncIterator[Any], str]:
            upstream = hooks.call_stream(spec=spec, call=job.call(timeout), client=client, transport=transport)
            job.input_tokens = job.output_tokens = 0  # a failed attempt's usage is not the answer's
            without_text: deque[bytes] = deque(maxlen=8)  # for the plugin to say why, if no text comes
            try:
                async for events in upstream:
                    if text := job.texts_of(events):
                        return upstream, text
                    without_text.extend(events_of(events))
            except BaseException as exc:
                await close_events(upstream)
                raise job.attempt_failure(exc) from None
            await close_events(upstream)
            # an empty answer is no answer: never a stream of nothing (e.g. thinking that spent
            # every output token); the plugin may say why from the last events
            if without_text:
                job.plugin_step(hooks.stream_without_text, "stream's last events", request=job.request,
                                events=list(without_text))
            raise ProviderBadResponse("the stream ended without any text")

        return self._attempts(job, attempt, True)
