"""The job pipeline: one job, top-down, as the container contract reads.

    decode → choose the target → attempts → postprocess → encode → record

- **decode** (`decode`): the body of `POST /service_output` becomes one `Job`: its
  `CSSRequest`, where its answer goes, and its record.
- **choose the target** (`target`): the provider's plugin encodes the call; the job's
  fallbacks (`CSS_FALLBACKS`) are targets too, tried in order once the job's own provider
  could not answer it; each attempt takes the next key of the target's pool.
- **attempts** (`_attempts`): tenacity makes every attempt, the first included, within the
  job's deadline, in one of the provider's in-flight slots, once the job's budgets admit it.
- **postprocess** (`_result`, `_stream_start`): the plugin reads the answer, or each
  streamed event, inside the attempt, so an unreadable answer is retried like a failure.
  A typed answer's JSON is read against its type there too: an answer that does not fit
  it is retried, and never delivered.
- **encode** (`encode`): the result in the shape of the job's destination (a typed
  answer: its values' ABI encoding on-chain, an object keyed by its names off-chain).
- **record**: what the job did is told to its record as it happens (attempts, waits,
  fallbacks, usage); the edge finishes the record once the answer is sent.

The pipeline knows no provider by name. A job its provider could not answer (it failed
after its retries, refused every key, is not served here, is busy, over budget, or every
key is cooling down) falls back; a request the provider rejected as bad, or a passed
deadline, does not. A stream falls back only before its first text.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import msgspec

from css_core.config import Settings
from css_core.errors import (
    CSSError,
    InvalidJob,
    OverBudget,
    PluginFailed,
    ProviderBadResponse,
    ProviderFailed,
    ProviderHTTPError,
    ProviderNotServed,
    ProviderUnreachable,
    ServiceBusy,
)
from css_core.jobs._attempts import Attempts, KeysCooling, call_hook, events_of, plugin_failed
from css_core.jobs.codec import encode_result
from css_core.jobs.decode import Job, decode_job
from css_core.jobs.fallbacks import Fallbacks, fall_back
from css_core.jobs.messages import JobLocation, OffchainOutput, OnchainOutput, encode_json
from css_core.jobs.retry import retrying
from css_core.jobs.streams import Streamed, close_events
from css_core.operations.metrics import outcome_of
from css_core.operations.record import JobRecord
from css_core.providers.http import ProviderHTTP
from css_core.providers.registry import Provider, Registry
from css_core.types import CSSRequest, ProviderCall, Result

__all__ = ("Pipeline", "Served", "Streamed")

T = TypeVar("T")
_clock = time.perf_counter
_DESTINATIONS = {JobLocation.ONCHAIN: "onchain", JobLocation.OFFCHAIN: "offchain", JobLocation.STREAM: "stream"}

# what could take a path out of the provider's base URL: a query, a fragment, a backslash,
# controls and spaces, or a "." / ".." segment, written plainly or percent-encoded (the
# HTTP client normalises `%2e%2e` to `..` and resolves it)
_UNSAFE_PATH = re.compile(r"[?#\\\x00-\x20\x7f]|(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)
# how a job ends when another provider might still answer it (a ProviderTimeout excepted)
_FALLS_BACK = (ProviderFailed, ServiceBusy, PluginFailed, ProviderNotServed, OverBudget)
_NO_FIELDS: dict[str, Any] = {}  # a plain job's answer format (never changed)


class Served(NamedTuple):
    """A job's result (a typed answer's: its values, in the type's order), and the provider and
    model that answered it."""

    result: Result | tuple[Any, ...]
    provider: Provider
    model: str


class Pipeline:
    """Runs one worker's jobs with its pooled HTTP client (see the module's docstring)."""

    def __init__(self, registry: Registry, settings: Settings, http: ProviderHTTP) -> None:
        self.registry = registry
        self.settings = settings
        self.http = http
        self.fallbacks = Fallbacks(settings.fallbacks)
        # one retry policy per provider and kind of job, built once; each job's controller defers to it
        self._retrying = {
            (provider.spec.name, stream): retrying(settings.retry, provider.spec.retryable_statuses, deadline)
            for provider in registry.providers
            for stream, deadline in ((False, settings.job_deadline), (True, settings.stream_deadline))
        }

    # -- the job's path, top-down ---------------------------------------------------------------------------

    def decode(self, body: bytes, record: JobRecord) -> Job:
        """decode: the job's body, validated once; its record learns what it asks."""
        job = decode_job(body, self.registry, self.settings, record)
        record.job(job.request, _DESTINATIONS[job.destination])
        return job

    async def run(self, job: Job) -> Served:
        """choose the target → attempts → postprocess, at the job's own provider, then at its fallbacks."""
        job.deadline_at = asyncio.get_running_loop().time() + self.settings.job_deadline
        try:
            attempts = self.target(job, job.request)
            result = await self._attempts(attempts, self._result, stream=False)
        except _FALLS_BACK as failure:
            attempts, result = await self._fall_back(job, failure, self._result, stream=False)
        return await self._served(attempts, result)

    async def stream(self, job: Job) -> Streamed:
        """The same for a stream, up to its first text: failures before it are retried (and fall
        back) and raised from here, so that the edge can still answer with an error status."""
        job.deadline_at = asyncio.get_running_loop().time() + self.settings.stream_deadline
        try:
            attempts = self.target(job, job.request)
            upstream, first = await self._attempts(attempts, self._stream_start, stream=True)
        except _FALLS_BACK as failure:
            attempts, (upstream, first) = await self._fall_back(job, failure, self._stream_start, stream=True)
        job.record.served(attempts.provider.spec.name, attempts.request.model)
        return Streamed(attempts, upstream, first)

    @staticmethod
    def encode(job: Job, served: Served) -> bytes:
        """encode: the result as the job's destination takes it (a stream is relayed by the edge)."""
        result, answer_type = served.result, job.answer_type
        if job.destination is JobLocation.ONCHAIN:
            if isinstance(result, tuple):
                assert answer_type is not None  # only a typed job's result is its values
                raw_output = answer_type.encode(result)
            else:
                assert isinstance(result, str)  # decode_job refuses embeddings on-chain
                raw_output = encode_result(result)
            return encode_json(OnchainOutput(raw_input=job.raw_input, raw_output=raw_output.hex()))
        if isinstance(result, tuple):
            assert answer_type is not None
            return encode_json(OffchainOutput(answer_type.to_json(result)))
        return encode_json(OffchainOutput(result))

    # -- choose the target ----------------------------------------------------------------------------------

    def target(self, job: Job, request: CSSRequest, more: bool | None = None) -> Attempts:
        """The job's attempts at `request.provider`: checked against it, its call encoded by the plugin.
        `more`: whether fallbacks follow this target (None: the job's own, looked up if it matters)."""
        provider = self.registry.by_name(request.provider)
        spec = provider.spec
        if not provider.served:
            raise ProviderNotServed(f"provider {spec.name} is not served by this node: {provider.unavailable_reason()}")
        if request.endpoint not in spec.endpoints:
            raise InvalidJob(
                f"{spec.name} has no {request.endpoint!r} endpoint (it serves: {', '.join(spec.endpoints)})"
            )
        if request.stream and not provider.streams:
            raise InvalidJob(f"{spec.name} cannot stream: its plugin does not implement css_parse_stream_event")
        schema = request.answer_schema
        if schema is not None and not provider.types_answers:
            raise InvalidJob(
                f"{spec.name} cannot give typed answers (its plugin does not implement css_encode_answer_format)"
            )
        if reserved := sorted(request.extra_args.keys() & spec.job_fields):
            raise InvalidJob(
                f"`extra_args` may not set {', '.join(reserved)}: {spec.name}'s request builds "
                f"{', '.join(sorted(spec.job_fields))} from the job itself"
            )
        call: ProviderCall | None = call_hook(provider, provider.hooks.encode_params, "encoding of the request",
                                              reading=False, request=request)
        if call is None:
            raise InvalidJob(f"{spec.name} cannot encode a {request.endpoint!r} request")
        body = call.body
        answer_format = _NO_FIELDS
        if schema is not None:
            answer_format = self._answer_format(provider, request, schema)
            body = {**body, **answer_format}
            if clash := sorted(key for key in request.extra_args.keys() & answer_format.keys()
                               if not isinstance(request.extra_args[key], dict)):
                raise InvalidJob(f"`extra_args` may not set {', '.join(clash)} in a typed job: {spec.name}'s "
                                 "request for the typed answer sets it")
        if options := {**provider.options_for(request.endpoint), **request.extra_args}:
            placed = call_hook(provider, provider.hooks.encode_options, "encoding of the options",
                               reading=False, request=request, options=options)
            placed = options if placed is None else placed
            body = _merge(body, placed, answer_format) if answer_format else {**body, **placed}

        def has_fallback() -> bool:
            nonlocal more
            if more is None:
                more = bool(self.fallbacks.targets(spec.name, request.model))
            return more

        policy = self._retrying[spec.name, request.stream]
        return Attempts(job, provider, request, _url(provider, call), msgspec.json.encode(body), policy,
                        self.settings.retry, has_fallback)

    @staticmethod
    def _answer_format(provider: Provider, request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any]:
        """The body fields that ask the provider for a typed answer (`css_encode_answer_format`)."""
        spec = provider.spec
        fields: dict[str, Any] | None = call_hook(provider, provider.hooks.encode_answer_format,
                                                  "encoding of the answer format", reading=False, request=request,
                                                  schema=schema)
        if fields is None:
            raise InvalidJob(f"{spec.name} cannot give a typed answer to this job (model {request.model!r}): "
                             "its plugin's css_encode_answer_format declined it")
        return fields

    async def _fall_back(self, job: Job, failure: CSSError, attempt: Callable[[Attempts], Awaitable[T]],
                         stream: bool) -> tuple[Attempts, T]:
        """The job at its fallbacks, once its own provider failed with `failure`."""

        async def start(redirected: CSSRequest, more: bool) -> tuple[Attempts, T]:
            attempts = self.target(job, redirected, more)
            return attempts, await self._attempts(attempts, attempt, stream)

        return await fall_back(self.registry, self.fallbacks, job.record, job.request, failure, start)

    # -- attempts -------------------------------------------------------------------------------------------

    def _occupy(self, provider: Provider) -> None:
        """Take one of the provider's in-flight slots; when none is left, answer 503 at once."""
        if provider.in_flight >= self.settings.max_in_flight:
            raise ServiceBusy(
                f"{provider.spec.name} already has {provider.in_flight} calls in flight on this worker "
                "(CSS_MAX_IN_FLIGHT); retry shortly"
            )
        provider.in_flight += 1

    async def _attempts(self, attempts: Attempts, attempt: Callable[[Attempts], Awaitable[T]], stream: bool) -> T:
        """The attempts at one target, each by tenacity, in one of its in-flight slots. A stream
        keeps its slot once it has started: the stream frees it when it ends."""
        provider, record = attempts.provider, attempts.job.record
        self._occupy(provider)
        held = False
        sent_at: float | None = None
        try:
            async with asyncio.timeout_at(attempts.job.deadline_at):
                if provider.pool.paused:
                    await attempts.wait_for_key()
                await record.admit(provider.spec.name, attempts.request.model)  # budgets: 429 before any call
                for try_ in attempts.retrying():
                    if attempts.pending_wait:
                        await attempts.wait_to_retry()
                    with try_:
                        sent_at = _clock()
                        try:
                            result = await attempt(attempts)
                        except Exception as exc:
                            record.attempt(outcome_of(exc), _clock() - sent_at)
                            sent_at = None
                            attempts.note(exc)
                            raise
                        held = stream
                        record.attempt("ok", _clock() - sent_at)
                        return result
        except TimeoutError as exc:
            if sent_at is not None:  # the deadline passed during an attempt
                record.attempt("timeout", _clock() - sent_at)
            raise attempts.failure(exc) from None
        except (ProviderHTTPError, ProviderBadResponse, ProviderUnreachable, KeysCooling) as exc:
            raise attempts.failure(exc) from None
        finally:
            if not held:
                provider.in_flight -= 1
        raise AssertionError("tenacity ended without a result or an exception")  # pragma: no cover

    # -- postprocess, inside each attempt --------------------------------------------------------------------

    async def _result(self, attempts: Attempts) -> Result | tuple[Any, ...]:
        """One attempt of a plain job: the call, then the plugin reads its result and usage, and
        a typed answer's values are read from its JSON."""
        provider = attempts.provider
        hooks, spec = provider.hooks, provider.spec
        try:
            body = await hooks.call(spec=spec, call=attempts.call(self.http),
                                    client=self.http.client, transport=self.http.transport_for(provider.base_url))
        except Exception as exc:
            raise attempts.attempt_failure(exc) from None
        result: Result | None = attempts.plugin_step(hooks.postprocess, "answer", request=attempts.request, body=body)
        if result is None:
            raise ProviderBadResponse(f"the answer of {spec.name} holds no result")
        answer_type = attempts.job.answer_type
        if answer_type is None:
            attempts.read_usage(body)
            return result
        if not isinstance(result, str):
            raise plugin_failed(provider, TypeError(f"css_postprocess returned {type(result).__name__} for a typed "
                                                    "answer, not its JSON text"), "answer")
        values = answer_type.read(result)
        attempts.read_usage(body)
        return values

    async def _stream_start(self, attempts: Attempts) -> tuple[AsyncIterator[Any], str]:
        """One attempt of a stream, until its first text; an empty stream is no answer."""
        provider = attempts.provider
        hooks, spec = provider.hooks, provider.spec
        upstream = hooks.call_stream(spec=spec, call=attempts.call(self.http),
                                     client=self.http.client, transport=self.http.transport_for(provider.base_url))
        attempts.input_tokens = attempts.output_tokens = 0  # a failed attempt's usage is not the answer's
        without_text: deque[bytes] = deque(maxlen=8)  # for the plugin to say why, if no text comes
        try:
            async for events in upstream:
                if text := attempts.texts_of(events):
                    return upstream, text
                without_text.extend(events_of(events))
        except BaseException as exc:
            await close_events(upstream)
            raise attempts.attempt_failure(exc) from None
        await close_events(upstream)
        if without_text:  # the plugin may say why (a finish reason, thinking that spent every token)
            attempts.plugin_step(hooks.stream_without_text, "stream's last events", request=attempts.request,
                                 events=list(without_text))
        raise ProviderBadResponse("the stream ended without any text")

    @staticmethod
    async def _served(attempts: Attempts, result: Result | tuple[Any, ...]) -> Served:
        """record: the answer's usage and who served it."""
        await attempts.report_usage()
        attempts.job.record.served(attempts.provider.spec.name, attempts.request.model)
        return Served(result, attempts.provider, attempts.request.model)


def _merge(body: dict[str, Any], options: dict[str, Any], answer_format: dict[str, Any]) -> dict[str, Any]:
    """The options over the body, the answer format over both: an object that both the options and
    the answer format set (e.g. Gemini's `generationConfig`, holding the answer's schema and the
    job's temperature) is merged, the answer format's fields winning, so that no option drops or
    changes the request for a typed answer."""
    merged = {**body, **options}
    for key, value in answer_format.items():
        given = options.get(key)
        merged[key] = {**given, **value} if isinstance(value, dict) and isinstance(given, dict) else value
    return merged


def _url(provider: Provider, call: ProviderCall) -> str:
    """The plugin's path and query below the provider's base URL, refused if a job's value in
    them could leave it."""
    path, query = call.path, call.query
    if _UNSAFE_PATH.search(path) or any(_UNSAFE_PATH.search(f"{k}={v}") for k, v in query.items()):
        raise InvalidJob(f"the request would change the provider's URL ({path!r}); check the model name")
    path = path if path.startswith("/") else "/" + path
    return provider.base_url + path + ("?" + urlencode(query) if query else "")
