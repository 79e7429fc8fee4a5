"""One job at one provider: the key of each attempt, how it retries, what its failures are called.

The retry policy is the provider's tenacity controller (`css_core.retry`). Each job runs a
copy of it with the strategies of `JobAttempts` (`wait`, `retry`, `stop`), which defer to
the policy and add only what the job knows: which key failed, and whether it has fallbacks.

- A 429 cools its key down for its `Retry-After` (else the policy's next wait). The next
  attempt waits 0 when another key is usable now, else until the first key is free again.
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
from tenacity import AsyncRetrying, RetryCallState

from css_core.config import RetryPolicy
from css_core.default_call import ErrorAnswer
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
from css_core.plugins import Provider
from css_core.provider_http import unreachable
from css_core.record import current
from css_core.retry import is_retryable, wait_seconds
from css_core.routing import Fallbacks
from css_core.types import CSSRequest, PreparedCall

__all__ = ("JobAttempts", "KeysCooling", "events_of", "refuses_key")

logger = logging.getLogger("css_core.workflow")
# what reading an answer of an unexpected shape raises: the answer is unreadable (retried)
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError, ValueError)
# what a plugin may raise on purpose; anything else is a bug in the plugin
_EXPECTED = (CSSError, ProviderHTTPError, ProviderBadResponse, ProviderUnreachable)
_MAX_DETAIL = 500  # a provider's error text passed on to the caller is cut to this length


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


class JobAttempts:
    """One job's attempts at one provider (its own, or a fallback target)."""

    # class-level defaults: a job that needs none of them (one key, no failure) sets only its provider and request
    attempts = 0
    url = ""
    content = b""
    key = 0  # the key of the last attempt
    refused: set[int] | None = None  # keys the provider refused during this job
    key_failed = False  # the last attempt failed because of its key (429, refused)
    hop = False  # ... because its key was refused: the next key is not a retry
    deadline_at = 0.0  # the event loop's time when the job's deadline passes
    more: bool | None = None  # whether fallbacks follow; None: ask `fallbacks` when it matters
    fallbacks: Fallbacks | None = None
    policy: AsyncRetrying | None = None
    retry_policy = RetryPolicy()
    last_event: bytes | None = None  # a stream's last event with text, whose usage is read when it ends
    failed_event: Exception | None = None  # a stream event's failure, raised once the text before it is relayed
    input_tokens = output_tokens = 0  # the usage the answer reports (a stream's: the largest of its events')

    def __init__(self, provider: Provider, request: CSSRequest) -> None:
        self.provider = provider
        self.request = request

    def has_fallback(self) -> bool:
        """Whether a fallback would take the job if it stopped now (looked up once, when it matters)."""
        if self.more is None:
            fallbacks = self.fallbacks
            self.more = bool(fallbacks and fallbacks.targets(self.provider.spec.name, self.request.model))
        return self.more

    # -- the attempts --------------------------------------------------------------------------------------

    def call(self, timeout: float) -> PreparedCall:
        """One attempt's request, with the next key's headers."""
        self.attempts += 1
        provider = self.provider
        pool = provider.pool
        if pool.size > 1 or pool.paused or self.refused:
            self.key = pool.pick(self.refused)
        return PreparedCall(self.url, provider.headers_for(self.key), self.content, timeout)

    def controller(self, policy: AsyncRetrying, retry_policy: RetryPolicy) -> AsyncRetrying:
        """This job's copy of the provider's retry policy."""
        self.policy, self.retry_policy = policy, retry_policy
        return policy.copy(before_sleep=self.before_sleep, wait=self.wait, retry=self.retry, stop=self.stop)

    async def admit(self) -> None:
        """Before the first attempt, when every key is cooling: wait until the first is free, or
        give up at once when the job has a fallback or the wait would pass its deadline."""
        seconds = self.provider.pool.wait(self.refused)
        if not seconds:
            return
        if self.has_fallback() or asyncio.get_running_loop().time() + seconds >= self.deadline_at:
            raise KeysCooling(seconds)
        logger.info("every key of %s is cooling down; the job waits %.1f s", self.provider.spec.name, seconds)
        current().waited(seconds)
        await asyncio.sleep(seconds)

    def note(self, exc: BaseException) -> None:
        """After a failed attempt: cool its key down after a 429, set it aside when refused."""
        self.key_failed = self.hop = False
        if not isinstance(exc, ProviderHTTPError):
            return
        pool, key, name = self.provider.pool, self.key, self.provider.spec.name
        if exc.status == 429:
            seconds = exc.retry_after if exc.retry_after is not None else wait_seconds(self.retry_policy,
                                                                                       self.attempts, None)
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
        """0 when another key is usable now, until the first key is free when all cool; else the policy's."""
        if self.key_failed:
            seconds = self.provider.pool.wait(self.refused)
            if seconds is not None:
                return seconds
        assert self.policy is not None
        return float(self.policy.wait(state))

    def retry(self, state: RetryCallState) -> bool:
        """The policy's choice, or another key after a key's failure the policy would not retry."""
        assert self.policy is not None
        if self.policy.retry(state):
            return True
        return self.key_failed and self.provider.pool.other(self.key, self.refused)

    def stop(self, state: RetryCallState) -> bool:
        """Not past the deadline, not while a fallback could answer now; else the policy's choice."""
        sleep = state.upcoming_sleep
        if asyncio.get_running_loop().time() + sleep >= self.deadline_at:
            return True
        if sleep > 0 and self.key_failed and self.has_fallback():
            return True
        assert self.policy is not None
        return not self.hop and bool(self.policy.stop(state))

    def before_sleep(self, state: RetryCallState) -> None:
        """Log the failed attempt and the wait before the next one."""
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        what = self.describe(exc) if exc else "?"
        logger.warning("%s attempt %d failed (%s); retrying in %.1f s", self.provider.spec.name, self.attempts,
                       what, wait)
        current().waited(wait)

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
        """The error the job ends with after `exc` ended its attempts at this provider."""
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

    def plugin_step(self, hook: Callable[..., Any], what: str, *, reading: bool = True, **kwargs: Any) -> Any:
        """Call one of the plugin's hooks. While `reading` an answer, an error of its shape is an
        unreadable answer (retried); any other exception, or any at all while encoding, is a bug
        in the plugin (not retried)."""
        try:
            return hook(spec=self.provider.spec, **kwargs)
        except _EXPECTED:
            raise
        except _UNREADABLE as exc:
            if not reading:
                raise self.plugin_failed(exc, what) from None
            raise ProviderBadResponse(f"unreadable {what}: {self.scrub(repr(exc))}") from None
        except Exception as exc:
            raise self.plugin_failed(exc, what) from None

    def plugin_failed(self, exc: Exception, what: str) -> PluginFailed:
        """A bug in the plugin: logged with its traceback, answered as a 500 naming the plugin."""
        provider = self.provider
        _scrub_exception(exc, provider.scrub)  # its traceback is logged: the plugin's message may hold a key
        logger.error("the plugin of %s (%s) failed on the %s", provider.spec.name, provider.plugin, what,
                     exc_info=exc)
        return PluginFailed(
            f"the {provider.spec.name} plugin ({provider.plugin}) failed on the {what}: {self.scrub(repr(exc))}; "
            "the service's log has its traceback"
        )

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
            await current().usage(self.input_tokens, self.output_tokens)

    def texts_of(self, events: list[bytes] | bytes) -> str:
        """The text of the events of one read (`css_parse_stream_event`), joined; the usage of
        those without text is noted (`css_usage`).

        An event that fails after others of the read carried text fails the stream only once
        that text is relayed: it is kept in `failed_event`, for the next read to raise."""
        parse, request = self.provider.hooks.parse_stream_event, self.request
        texts: list[str] = []
        for data in events_of(events):
            try:
                text = self.plugin_step(parse, "stream event", request=request, data=data)
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
        return self.plugin_failed(exc, "call")
