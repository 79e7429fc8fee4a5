"""One job's record: what its metrics, its log line and its budgets need to know of it.

`ServiceOutput` starts a `JobRecord` for each `POST /service_output`, tells it what it
sees (the job, the pipeline's call, the answer's status, the stream's chunks) and finishes
it once the answer is sent: the job's metrics are then written and its one log line
(`job finished`: INFO, WARNING for a 5xx) is logged, naming the error the job ended with and
its reason. The job pipeline holds the record in `Job.record` and tells it what only the
pipeline sees:

- `attempt(outcome, seconds)` after each provider attempt: `outcome` is `outcome_of(exc)`
  (`css_core.operations.metrics`), `seconds` the time spent waiting for the provider's answer (for a
  stream, for its first event);
- `waited(seconds)` for each wait between attempts (a retry's, a cooling key's);
- `fallback(from_provider, to_provider, to_model)` when the job moves to a fallback target,
  before its attempts there;
- `await admit(provider, model)` before the first attempt at each target: it checks and
  counts the budgets covering it, raising `OverBudget` (429) or `StoreUnavailable` (503);
- `await usage(input_tokens, output_tokens)` when an answer reports its usage.

A record made without a `Recorder` (a test calling the pipeline directly) keeps nothing.
Only `admit` raises on purpose. A metrics write never fails a job: a failed one (a full
disk) is logged, once per worker, and the job goes on (its in-flight slots are freed all the
same).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from litestar.exceptions import HTTPException

from css_core.errors import CSSError, InvalidJob, ProviderNotAvailable, ServiceBusy, StreamCut
from css_core.operations import request_id
from css_core.operations.logs import JOB_FIELDS

if TYPE_CHECKING:
    from css_core.operations.budgets import Budgets, Slot
    from css_core.operations.metrics import Metrics, Series
    from css_core.types import CSSRequest, ProviderSpec

__all__ = ("ClientLeft", "JobRecord", "Recorder", "ServedProvider")

logger = logging.getLogger("css_core.jobs")
_clock = time.perf_counter
_OPERATIONS = {"completions": "chat", "embeddings": "embeddings"}
# the OpenTelemetry GenAI conventions' names of the providers they know; any other is its name in lower case
_GEN_AI_NAMES = {"OPENAI": "openai", "ANTHROPIC": "anthropic", "GEMINI": "gcp.gemini", "PERPLEXITYAI": "perplexity",
                 "MISTRAL": "mistral_ai", "GROQ": "groq", "DEEPSEEK": "deepseek", "COHERE": "cohere"}
# what a job ends with when no provider call was made for it: the requests it counted are given back
_NEVER_SENT = (InvalidJob, ProviderNotAvailable, ServiceBusy)
_SHOWN = 128  # a job's names are cut to this length in its log line
_REASON_SHOWN = 1024  # ... and its error's message to this one
_JOB_PATH = "/service_output"
_RECORDED = "css.job_recorded"


class ClientLeft(Exception):
    """What a job ends with when its client went away before its answer."""


class ServedProvider(Protocol):
    """What the record needs of an installed provider (the registry's `Provider` is one)."""

    @property
    def spec(self) -> ProviderSpec: ...

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def served(self) -> bool: ...


class _Provider(NamedTuple):
    """What the labels of a job for one installed provider may hold."""

    name: str
    gen_ai_name: str
    models: frozenset[str]
    endpoints: frozenset[str]
    served: bool


_NONE = _Provider("none", "none", frozenset(), frozenset(), False)


class Recorder:
    """Starts and finishes the records of one worker's jobs."""

    def __init__(self, providers: Iterable[ServedProvider], metrics: Metrics | None = None,
                 budgets: Budgets | None = None) -> None:
        self.metrics = metrics
        self.metrics_failed = False  # a metrics write failed: logged once, not again
        self.budgets = budgets if budgets is not None and budgets.active else None
        self.providers = {
            p.spec.name.upper(): _Provider(p.spec.name, _GEN_AI_NAMES.get(p.spec.name.upper(), p.spec.name.lower()),
                                           frozenset(p.models), frozenset(p.spec.endpoints), p.served)
            for p in providers
        }
        if metrics is not None:
            metrics.bind_providers(p.name for p in self.providers.values())

    def start(self, scope: MutableMapping[str, Any]) -> JobRecord:
        """The record of the job `scope` asks for; its id names the task's log lines."""
        record = JobRecord(self, request_id.request_id(scope))
        scope["state"][_RECORDED] = True
        request_id.current.set(record.request_id)
        return record

    async def answered_before(self, message: MutableMapping[str, Any], scope: MutableMapping[str, Any]) -> None:
        """Litestar's `before_send` hook: a job answered before `ServiceOutput` saw it (the bearer
        guard's 401) is counted and logged too, as refused before its provider was known."""
        if message["type"] == "http.response.start" and scope.get("path") == _JOB_PATH \
                and not scope["state"].get(_RECORDED):
            scope["state"][_RECORDED] = True
            record = JobRecord(self, request_id.request_id(scope))
            record.status = message["status"]
            await self.finish(record)

    def provider(self, name: str) -> _Provider:
        return self.providers.get(name.upper(), _NONE)

    async def finish(self, record: JobRecord) -> None:
        """Write the job's metrics, log its line, give back what it counted but never sent."""
        duration = _clock() - record.started
        provider_seconds = (record.provider_seconds if record.attempts else record.workflow_seconds) + \
            record.relay_seconds
        if (metrics := self.metrics) is not None:
            try:
                self._observe(metrics, record, duration, provider_seconds)
            except Exception as exc:  # the job has its answer all the same
                self.metrics_write_failed(exc)
        level = logging.WARNING if record.status >= 500 else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(level, "job finished", extra={JOB_FIELDS: record.fields(duration, provider_seconds)})
        if (budgets := self.budgets) is not None and record.slots and record.attempts == 0 \
                and isinstance(record.error, _NEVER_SENT):
            await budgets.refund(record.slots)

    def metrics_write_failed(self, exc: Exception) -> None:
        """A metrics write raised (its file: a full disk, an unmapped file): logged the first time only,
        as the next job's writes would fail the same way."""
        if not self.metrics_failed:
            self.metrics_failed = True
            logger.error("a metrics write failed (%s): this worker's metrics miss what it could not write; "
                         "further failures are not logged", exc, exc_info=exc)

    @staticmethod
    def _observe(metrics: Metrics, record: JobRecord, duration: float, provider_seconds: float) -> None:
        provider, in_flight = record.provider, record.in_flight
        if in_flight is not None:  # first: a later write that fails must not leave the job counted in
            record.in_flight = None
            in_flight.add(-1.0)
        metrics.jobs.series(provider.name, record.model, record.endpoint, record.destination,
                            str(record.status)).add(1.0)
        metrics.job_seconds.histogram(provider.name, record.endpoint, record.destination).observe(duration)
        metrics.overhead.observe(max(0.0, duration - provider_seconds - record.waited_seconds))
        if in_flight is not None:
            target = record.target
            metrics.gen_ai_seconds.histogram(target.gen_ai_name, record.target_model_label(),
                                             _OPERATIONS.get(record.endpoint, record.endpoint),
                                             record.error_type()).observe(duration)


class JobRecord:
    """One job, as its metrics, its log line and its budgets see it."""

    __slots__ = (
        "_recorder", "attempts", "counted", "destination", "endpoint", "error", "first_chunk", "in_flight",
        "input_tokens", "job_endpoint", "job_model", "job_provider", "model", "output_tokens", "provider",
        "provider_seconds", "relay_seconds", "request_id", "responded", "slots", "started", "status", "target",
        "target_model", "waited_seconds", "workflow_seconds",
    )

    def __init__(self, recorder: Recorder | None, rid: str) -> None:
        self._recorder = recorder
        self.request_id = rid
        self.started = _clock()
        # the job as its labels show it: bounded values only (`css_core.operations.metrics`)
        self.provider, self.model, self.endpoint, self.destination = _NONE, "none", "none", "none"
        # ... and as its log line shows it
        self.job_provider = self.job_model = self.job_endpoint = ""
        self.target, self.target_model = _NONE, ""  # who serves it: its own provider, or a fallback
        self.status = 200
        self.error: BaseException | None = None
        self.responded = False  # the answer's status is sent: a later failure does not change it
        self.attempts = 0
        self.provider_seconds = self.waited_seconds = self.workflow_seconds = self.relay_seconds = 0.0
        self.first_chunk: float | None = None
        self.input_tokens = self.output_tokens = 0
        self.in_flight: Series | None = None
        self.counted: set[tuple[str, str]] = set()  # budgets (key, unit) this job counted a request in
        self.slots: list[Slot] = []

    # -- what ServiceOutput tells it ------------------------------------------------------------------------

    def job(self, request: CSSRequest, destination: str) -> None:
        """The job is decoded; `destination` is its label (`onchain`, `offchain`, `stream`)."""
        self.destination = destination
        self.job_provider, self.job_model, self.job_endpoint = request.provider, request.model, request.endpoint
        recorder = self._recorder
        if recorder is None:
            return
        provider = recorder.provider(request.provider)
        if provider is not _NONE:
            self.provider = self.target = provider
            self.model = request.model if request.model in provider.models else "other"
            self.endpoint = request.endpoint if request.endpoint in provider.endpoints else "other"
        self.target_model = request.model

    def enter(self) -> None:
        """The job is handed to the workflow."""
        recorder = self._recorder
        if recorder is not None and recorder.metrics is not None and self.provider is not _NONE:
            try:
                in_flight = recorder.metrics.in_flight.series(self.provider.name)
                in_flight.add(1.0)
            except Exception as exc:  # not counted in, so not counted out when it finishes
                recorder.metrics_write_failed(exc)
            else:
                self.in_flight = in_flight

    def served(self, provider: str, model: str) -> None:
        """Who answered: the job's own provider and model, or a fallback's."""
        if self._recorder is not None:
            self.target = self._recorder.provider(provider)
        self.target_model = model

    def streaming(self) -> None:
        """A stream's first text is ready: its 200 is about to be sent."""
        self.first_chunk = _clock() - self.started
        recorder = self._recorder
        if recorder is not None and recorder.metrics is not None:
            try:
                recorder.metrics.first_chunk.histogram(self.target.name).observe(self.first_chunk)
            except Exception as exc:
                recorder.metrics_write_failed(exc)

    def failed(self, exc: BaseException) -> None:
        """The job ended with `exc`; its status is the one its answer is sent with, unless one was sent already."""
        self.error = exc
        if not self.responded:
            self.status = exc.status if isinstance(exc, CSSError) else \
                exc.status_code if isinstance(exc, HTTPException) else 500

    def left(self) -> None:
        """The client went away before the answer: nothing was sent (nginx's 499 names that)."""
        if not self.responded:
            self.status = 499
        self.error = self.error or ClientLeft()

    # -- what the workflow tells it (see the module's docstring) ----------------------------------------------

    def attempt(self, outcome: str, seconds: float) -> None:
        """One provider attempt ended with `outcome` (`metrics.outcome_of`) after `seconds` of waiting for it."""
        self.attempts += 1
        self.provider_seconds += seconds
        recorder = self._recorder
        if recorder is not None and recorder.metrics is not None:
            try:
                recorder.metrics.attempts.series(self.target.name, outcome).add(1.0)
            except Exception as exc:  # raised here, it would end the attempt's answer (and hold a stream's slot)
                recorder.metrics_write_failed(exc)

    def waited(self, seconds: float) -> None:
        """The job waited `seconds` between attempts (a retry's wait, a cooling key's)."""
        self.waited_seconds += seconds

    def fallback(self, from_provider: str, to_provider: str, to_model: str | None = None) -> None:
        """The job moves from `from_provider` to a fallback target, before its attempts there."""
        recorder = self._recorder
        if recorder is None:
            return
        source, target = recorder.provider(from_provider), recorder.provider(to_provider)
        self.target = target
        if to_model is not None:
            self.target_model = to_model
        if recorder.metrics is not None:
            try:
                recorder.metrics.fallbacks.series(source.name, target.name).add(1.0)
            except Exception as exc:
                recorder.metrics_write_failed(exc)

    async def admit(self, provider: str, model: str) -> None:
        """Before the first attempt at (`provider`, `model`): check the budgets covering it, and count
        this job's request in each it has not been counted in yet. Raises `OverBudget` (429:
        nothing counted, the provider must not be called) or `StoreUnavailable` (503)."""
        recorder = self._recorder
        if recorder is not None and recorder.budgets is not None:
            self.slots += await recorder.budgets.admit(provider, model, self.counted)

    async def usage(self, input_tokens: int, output_tokens: int) -> None:
        """The provider's usage of an answer (of the current target): its metrics, and its budgets' tokens."""
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        recorder = self._recorder
        if recorder is None:
            return
        target = self.target
        if recorder.metrics is not None:
            tokens = recorder.metrics.gen_ai_tokens
            model, operation = self.target_model_label(), _OPERATIONS.get(self.endpoint, self.endpoint)
            try:
                tokens.histogram(target.gen_ai_name, model, operation, "input").observe(input_tokens)
                tokens.histogram(target.gen_ai_name, model, operation, "output").observe(output_tokens)
            except Exception as exc:  # the tokens are still counted in the budgets below
                recorder.metrics_write_failed(exc)
        if recorder.budgets is not None and target is not _NONE:
            await recorder.budgets.add_tokens(target.name, self.target_model, input_tokens + output_tokens)

    # -- what it shows ----------------------------------------------------------------------------------------

    def target_model_label(self) -> str:
        """The serving model as a label: one of its provider's catalogue, or `other`."""
        target = self.target
        if target is _NONE:
            return "none"
        return self.target_model if self.target_model in target.models else "other"

    def error_type(self) -> str:
        """The OpenTelemetry `error.type`: the class of the error the job ended with ("" when it did not)."""
        error = self.error
        if error is None:
            return ""
        # the service's own classes (a bounded set); anything else is the conventions' catch-all
        return type(error).__name__ if isinstance(error, _OWN_ERRORS) else "_OTHER"

    def fields(self, duration: float, provider_seconds: float) -> dict[str, Any]:
        """The job's log fields: names, numbers and statuses, never its messages or options."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "provider": self.provider.name if self.provider is not _NONE else _cut(self.job_provider) or "none",
            "model": _cut(self.job_model) or "none",
            "endpoint": _cut(self.job_endpoint) or "none",
            "destination": self.destination,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": round(duration * 1000, 2),
            "provider_ms": round(provider_seconds * 1000, 2),
        }
        if self.target is not self.provider or (self.target_model and self.target_model != self.job_model):
            fields["served_by"] = f"{self.target.name}/{_cut(self.target_model)}"
        if self.first_chunk is not None:
            fields["first_chunk_ms"] = round(self.first_chunk * 1000, 2)
        if self.input_tokens or self.output_tokens:
            fields["input_tokens"], fields["output_tokens"] = self.input_tokens, self.output_tokens
        if (error := self.error) is not None:
            fields["error"] = _public_name(type(error))
            if reason := _reason(error):
                fields["reason"] = reason
        return fields


# the errors whose class names a job's metrics show, and whose messages its log line shows: the
# service's own, which never hold a key
_OWN_ERRORS = (CSSError, HTTPException, ClientLeft, StreamCut)


def _public_name(kind: type[BaseException]) -> str:
    """The name of `kind`, or of its first public base: a log line names no private class."""
    return next(cls.__name__ for cls in kind.__mro__ if not cls.__name__.startswith("_"))


def _reason(error: BaseException) -> str:
    """The message of one of the service's own errors, the description its answer carried; nothing
    of another (an unexpected error's message may hold anything)."""
    if isinstance(error, CSSError):
        text = error.message
    elif isinstance(error, HTTPException):
        text = error.detail
    elif isinstance(error, StreamCut):
        text = str(error)
    else:
        return ""
    return text if len(text) <= _REASON_SHOWN else text[:_REASON_SHOWN] + "…"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
