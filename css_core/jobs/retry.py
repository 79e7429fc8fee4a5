"""The retry policy: which failures are retried, how long to wait, when to give up.

One tenacity controller per provider and kind of job (plain or streamed) holds the whole
policy; each job runs a controller of its own that defers to it (tenacity keeps a run's
state on the object; `css_core.jobs._attempts`). Waits
follow the `retry` package the reference container used: the n-th wait is
`min(delay * backoff**(n-1), max_delay)` plus a random jitter in `[low, high]`; a
provider's retry hint (`Retry-After`) replaces it. Attempts stop after `tries`, or as soon
as the next wait would pass the job's deadline.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay

from css_core.config import RetryPolicy
from css_core.errors import ProviderBadResponse, ProviderHTTPError, ProviderUnreachable

__all__ = ("is_retryable", "retrying", "wait_seconds")


def is_retryable(exc: BaseException, retryable_statuses: frozenset[int]) -> bool:
    """429, 5xx (as the provider declares them), connection errors, timeouts, bad bodies."""
    if isinstance(exc, ProviderHTTPError):
        return exc.status in retryable_statuses if exc.retryable is None else exc.retryable
    if isinstance(exc, ProviderBadResponse):
        return exc.retryable
    return isinstance(exc, ProviderUnreachable)


def wait_seconds(policy: RetryPolicy, attempt: int, exc: BaseException | None) -> float:
    """How long to wait after failed attempt number `attempt` (1-based)."""
    if isinstance(exc, ProviderHTTPError) and exc.retry_after is not None:
        return exc.retry_after
    low, high = policy.jitter
    return min(policy.delay * policy.backoff ** (attempt - 1), policy.max_delay) + random.uniform(low, high)


def retrying(policy: RetryPolicy, retryable_statuses: frozenset[int], deadline: float) -> Retrying:
    """The policy as a tenacity controller, whose strategies each job's controller asks."""

    def wait(state: RetryCallState) -> float:
        return wait_seconds(policy, state.attempt_number, state.outcome.exception() if state.outcome else None)

    return Retrying(
        stop=stop_after_attempt(policy.tries) | stop_before_delay(deadline),
        wait=wait,
        retry=retry_if_exception(lambda exc: is_retryable(exc, retryable_statuses)),
        reraise=True,
    )
