"""One job at one target: the key of each attempt, how it retries, what its failures are called.

The retry policy is the provider's tenacity controller (`css_core.jobs.retry`); each job
runs a controller of its own (`Attempts.retrying`), whose strategies (`wait`, `retry`,
`stop`) defer to the policy and add only what the job knows: which key failed, and whether
it has fallbacks. tenacity makes every attempt, the first included, and decides every wait.

The job's controller is tenacity's plain `Retrying`, iterated by the pipeline's coroutine,
with a `sleep` that only notes the wait: the coroutine then awaits it (`wait_to_retry`), so
nothing blocks the event loop. `AsyncRetrying` does the same awaiting itself, but it wraps
and inspects every strategy on every attempt, which costs several times the whole of a
plain job's retry bookkeeping.

- A 429 cools its key down for its `Retry-After` (capped, see `Attempts.note`), else for the
  configured policy's next wait. The next attempt waits 0 when another key is usable now,
  else until the first key is free again.
- A refused key (401, 403, a plugin's `key_refused`) is set aside and the next key tried
  at once; that hop is never stopped by the number of tries, only by the deadline.
- When every key is cooling and the job has a fallback, it stops at once: the fallback
  answers sooner than the wait would end.
- No attempt waits past the job's deadline, which a fallback target shares with the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
from tenacity import RetryCallState, Retrying

from css_core.config import RetryPolicy
from css_core.errors import (
    CSSError,
    PluginFailed,
    ProviderBadResponse,
    ProviderFailed,
    ProviderHTTPError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnreachable,
)
from css_core.jobs.decode import Job
from css_core.jobs.retry import is_retryable, wait_seconds
from css_core.providers.default_call import ErrorAnswer
from css_core.providers.http import ProviderHTTP, named_events, unreachable
from css_core.providers.registry import Provider
from css_core.types import CSSRequest, PreparedCall

__all__ = ("RETRY_AFTER_CAP", "Attempts", "KeysCooling", "call_hook", "events_of", "plugin_failed", "refuses_key")

logger = logging.getLogger("css_core.jobs.pipeline")
# what reading an answer of an unexpected shape raises (the standard library's
# json.JSONDecodeError is a ValueError): the answer is unreadable, and retried
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError, ValueError)
# what a plugin may raise on purpose; anything else is a bug in the plugin
_EXPECTED = (CSSError, ProviderHTTPError, ProviderBadResponse, ProviderUnreachable)
_MAX_DETAIL = 500  # a provider's error text passed on to the caller is cut to this length
#: the longest a `Retry-After` sets a key aside when `CSS_KEY_DISABLE_SECONDS` is 0
RETRY_AFTER_CAP = 600.0


def refuses_key(exc: ProviderHTTPError) -> bool:
    """Whether the provider refused the key: as its plugin says, else a 401 or a 403."""
    return bool(exc.key_refused or (exc.key_refused is None and exc.status in (401, 403)))


def _scrub_exception(exc: BaseException, scrub: Callable[[str], str]) -> None:
    """Remove the keys from the text arguments of `exc` and of the exceptions it was raised from."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in current.args)
        current = current.__cause__ or current.__context__


class KeysCooling(Exception):
    """Every key of the provider is cooling down after a 429, and the job does not wait for one."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"every key is cooling down after HTTP 429; the first is free again in {seconds:.1f} s")


def events_of(read: list[bytes] | bytes) -> list[bytes]:
    """The event payloads of one item of a provider's stream: the core's call yields the events
    of each read together, a plugin's own call may yield them one by one."""
    return [read] if isinstance(read, bytes) else read


class Attempts:
    """One job's attempts at one target (its own provider, or a fallback's), and their state."""

    __slots__ = (
        "attempts", "content", "failed_event", "has_fallback", "hop", "input_tokens", "job", "key", "key_failed",
        "last_event", "output_tokens", "pending_wait", "policy", "provider", "refused", "request",
        "retry_after_cap", "retry_policy", "url",
    )

    def __init__(self, job: Job, provider: Provider, request: CSSRequest, url: str, content: bytes,
                 policy: Retrying, retry_policy: RetryPolicy, has_fallback: Callable[[], bool]) -> None:
        self.job = job
        self.provider = provider
        self.request = request  # the job's request, redirected to this target's provider and model
        self.url, self.content = url, content
        self.policy = policy  # the provider's retry policy, which this job's copy defers to
        self.retry_policy = retry_policy  # ... its parameters (`CSS_REQUEST_*`), for a 429's cool-down
        self.has_fallback = has_fallback  # whether a fallback would take the job if it stopped now
        disable = provider.pool.disable_seconds
        self.retry_after_cap = disable if disable > 0 else RETRY_AFTER_CAP
        self.attempts = 0
        self.key = 0  # the key of the last attempt
        self.refused: set[int] | None = None  # keys the provider refused during this job
        self.key_failed = False  # the last attempt failed because of its key (429, refused)
        self.hop = False  # ... because its key was refused: the next key is not a retry
        self.last_event: bytes | None = None  # a stream's last event with text, whose usage is read when it ends
        self.failed_event: Exception | None = None  # a stream event's failure, raised once the text before it is sent
        self.input_tokens = self.output_tokens = 0  # the usage the answer reports (a stream's: its largest)
        self.pending_wait = 0.0  # the wait tenacity chose before the next attempt, not yet awaited

    # -- the attempts --------------------------------------------------------------------------------------

    def call(self, http: ProviderHTTP) -> PreparedCall:
        """One attempt's request, with the next key's headers, and the worker's timeout and limits."""
        self.attempts += 1
        provider = self.provider
        pool = provider.pool
        if pool.size > 1 or pool.paused or self.refused:
            self.key = pool.pick(self.refused)
        return PreparedCall(self.url, provider.headers_for(self.key), self.content, http.timeout,
                            http.max_answer_bytes, http.max_event_bytes)

    def retrying(self) -> Retrying:
        """This job's tenacity controller: the job's strategies, deferring to the provider's policy."""
        return Retrying(stop=self.stop, wait=self.wait, retry=self.retry, before_sleep=self.before_sleep,
                        sleep=self._wait_later, reraise=True)

    def _wait_later(self, seconds: float) -> None:
        self.pending_wait = seconds

    async def wait_to_retry(self) -> None:
        """Await the wait tenacity chose before this attempt (see the module's docstring)."""
        seconds, self.pending_wait = self.pending_wait, 0.0
        await asyncio.sleep(seconds)

    async def wait_for_key(self) -> None:
        """Before the first attempt, when every key is cooling: wait until the first is free, or
        give up at once when the job has a fallback or the wait would pass its deadline."""
        seconds = self.provider.pool.wait(self.refused)
        if not seconds:
            return
        if self.has_fallback() or asyncio.get_running_loop().time() + seconds >= self.job.deadline_at:
            raise KeysCooling(seconds)
        logger.info("every key of %s is cooling down; the job waits %.1f s", self.provider.spec.name, seconds)
        self.job.record.waited(seconds)
        await asyncio.sleep(seconds)

    def note(self, exc: BaseException) -> None:
        """After a failed attempt: cool its key down after a 429, set it aside when refused.

        A 429's cool-down is its `Retry-After`, never longer than `CSS_KEY_DISABLE_SECONDS`
        (600 s when that is 0), else the configured policy's wait after this attempt."""
        self.key_failed = self.hop = False
        if not isinstance(exc, ProviderHTTPError):
            return
        pool, key, name = self.provider.pool, self.key, self.provider.spec.name
        if exc.status == 429:
            if exc.retry_after is not None:
                seconds = min(exc.retry_after, self.retry_after_cap)
            else:
                seconds = wait_seconds(self.retry_policy, self.attempts, None)
            pool.cool(key, seconds)
            self.key_failed = True
            if pool.size > 1:
                logger.info("%s %s cools down for %.1f s (HTTP 429)", name, pool.name(key), seconds)
        elif refuses_key(exc):
            if self.refused is None:
                self.refused = set()
            self.refused.add(key)
            self.key_failed = self.hop = True
            if pool.set_aside(key):
                logger.warning("%s refused %s (HTTP %d); it is set aside for %g s (CSS_KEY_DISABLE_SECONDS)",
                               name, pool.name(key), exc.status, pool.disable_seconds)

    # -- the job's strategies for its copy of the retry policy ----------------------------------------------

    def wait(self, state: RetryCallState) -> float:
        """0 when another key is usable now, until the first key is free when all cool; else the policy's
        (a `Retry-After` no longer than the cap)."""
        if self.key_failed:
            seconds = self.provider.pool.wait(self.refused)
            if seconds is not None:
                return seconds
        return min(float(self.policy.wait(state)), self.retry_after_cap)

    def retry(self, state: RetryCallState) -> bool:
        """The policy's choice, or another key after a key's failure the policy would not retry."""
        if self.policy.retry(state):
            return True
        return self.key_failed and self.provider.pool.other(self.key, self.refused)

    def stop(self, state: RetryCallState) -> bool:
        """Not past the deadline, not while a fallback could answer now; else the policy's choice."""
        sleep = state.upcoming_sleep
        if asyncio.get_running_loop().time() + sleep >= self.job.deadline_at:
            return True
        if sleep > 0 and self.key_failed and self.has_fallback():
            return True
        return not self.hop and bool(self.policy.stop(state))

    def before_sleep(self, state: RetryCallState) -> None:
        """Log the failed attempt and the wait before the next one."""
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        what = self.describe(exc) if exc else "?"
        logger.warning("%s attempt %d failed (%s); retrying in %.1f s", self.provider.spec.name, self.attempts,
                       what, wait)
        self.job.record.waited(wait)

    # -- what failures are called --------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """`text` without the API keys (even masked), then cut short (in this order: no piece of a
        cut key is left)."""
        text = self.provider.scrub(text)
        return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"

    def describe(self, exc: BaseException) -> str:
        """A failure in words, its key named by position, without the keys."""
        if isinstance(exc, ProviderHTTPError):
            pool = self.provider.pool
            key = f"{pool.name(self.key)}: " if pool.size > 1 else ""
            return self.scrub(f"{key}HTTP {exc.status}: {exc.message}")
        return self.scrub(str(exc) or type(exc).__name__)

    def failure(self, exc: BaseException) -> Exception:
        """The error the job ends with after `exc` ended its attempts at this target."""
        name, attempts, what = self.provider.spec.name, self.attempts, self.describe(exc)
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(f"{name} did not answer within the job deadline ({attempts} attempt(s) made)")
        if isinstance(exc, ProviderHTTPError):
            if refuses_key(exc):
                refused = sorted(self.refused or ())
                if len(refused) > 1:
                    keys = ", ".join(self.provider.pool.name(key) for key in refused)
                    return ProviderFailed(f"{name} refused this service's API keys ({keys}); last error: {what}")
                return ProviderFailed(f"{name} refused this service's API key ({what})")
            if 400 <= exc.status < 500 and not is_retryable(exc, self.provider.spec.retryable_statuses):
                return ProviderRejected(f"{name} rejected the request ({what})")
        return ProviderFailed(f"{name} failed after {attempts} attempt(s); last error: {what}")

    def plugin_step(self, hook: Callable[..., Any], what: str, **kwargs: Any) -> Any:
        """Call one of the plugin's hooks that reads an answer (see `call_hook`)."""
        return call_hook(self.provider, hook, what, reading=True, **kwargs)

    def read_usage(self, data: bytes) -> None:
        """Note the tokens an answer's body or a stream's event reports (`css_usage`). A plugin that
        cannot read them is logged: the job keeps its answer, uncounted."""
        try:
            usage = self.provider.hooks.usage(spec=self.provider.spec, request=self.request, data=data)
        except Exception as exc:
            logger.warning("the plugin of %s (%s) could not read the answer's usage: %s", self.provider.spec.name,
                           self.provider.plugin, self.scrub(repr(exc)))
            return
        if usage is not None:
            self.input_tokens = max(self.input_tokens, usage.input_tokens)
            self.output_tokens = max(self.output_tokens, usage.output_tokens)

    async def report_usage(self) -> None:
        """Report the answer's usage to the job's record (its metrics and token budgets), if any."""
        if self.input_tokens or self.output_tokens:
            await self.job.record.usage(self.input_tokens, self.output_tokens)

    def texts_of(self, events: list[bytes] | bytes) -> str:
        """The text of the events of one read (`css_parse_stream_event`), joined; the usage of
        those without text is noted (`css_usage`).

        An event that fails after others of the read carried text fails the stream only once
        that text is relayed: it is kept in `failed_event`, for the next read to raise."""
        parse, request = self.provider.hooks.parse_stream_event, self.request
        texts: list[str] = []
        for event, data in named_events(events):
            try:
                text = self.plugin_step(parse, "stream event", request=request, data=data, event=event)
            except Exception as exc:
                if not texts:
                    raise
                self.failed_event = exc
                break
            if text:
                texts.append(text)
                self.last_event = data
            else:
                self.last_event = None
                self.read_usage(data)
        return texts[0] if len(texts) == 1 else "".join(texts)

    def attempt_failure(self, exc: BaseException) -> BaseException:
        """What a failed call means: a non-2xx answer read by the plugin, a dropped connection, or
        a bug in a plugin's own call."""
        if isinstance(exc, ErrorAnswer):
            error: ProviderHTTPError = self.plugin_step(self.provider.hooks.read_error, "error answer",
                                                        status=exc.status, body=exc.body, retry_after=exc.retry_after)
            return error
        if isinstance(exc, httpx.TransportError):  # a plugin's own call
            return unreachable(exc)
        if isinstance(exc, _EXPECTED) or not isinstance(exc, Exception):  # a cancellation, a closed stream
            return exc
        return plugin_failed(self.provider, exc, "call")


def call_hook(provider: Provider, hook: Callable[..., Any], what: str, *, reading: bool, **kwargs: Any) -> Any:
    """Call one of the plugin's hooks. While `reading` an answer, an error of its shape is an
    unreadable answer (retried); any other exception, or any at all while encoding, is a bug
    in the plugin (not retried)."""
    try:
        return hook(spec=provider.spec, **kwargs)
    except _EXPECTED:
        raise
    except _UNREADABLE as exc:
        if not reading:
            raise plugin_failed(provider, exc, what) from None
        detail = provider.scrub(_in_words(exc))
        raise ProviderBadResponse(f"unreadable {what}: {detail[:_MAX_DETAIL]}") from None
    except Exception as exc:
        raise plugin_failed(provider, exc, what) from None


def _in_words(exc: BaseException) -> str:
    """An unreadable answer's cause for the caller: the decoder's own message, or what was missing."""
    if isinstance(exc, IndexError):
        return "an expected list is empty"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} in it" if exc.args else "a field is missing"
    return str(exc) or type(exc).__name__


def plugin_failed(provider: Provider, exc: Exception, what: str) -> PluginFailed:
    """A bug in the plugin: logged with its traceback, answered as a 500 naming the plugin."""
    _scrub_exception(exc, provider.scrub)  # its traceback is logged: the plugin's message may hold a key
    logger.error("the plugin of %s (%s) failed on the %s", provider.spec.name, provider.plugin, what, exc_info=exc)
    detail = provider.scrub(repr(exc))
    return PluginFailed(
        f"the {provider.spec.name} plugin ({provider.plugin}) failed on the {what}: "
        f"{detail if len(detail) <= _MAX_DETAIL else detail[:_MAX_DETAIL] + '…'}; the service's log has its traceback"
    )
