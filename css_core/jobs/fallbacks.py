"""Fallbacks: which other provider and model answer a job its own could not (`CSS_FALLBACKS`).

`CSS_FALLBACKS` is a JSON object. A key `"PROVIDER/model"` holds the fallbacks of that
model, a key `"PROVIDER"` those of any model of the provider (the exact key wins, so
`"OPENAI/gpt-4": []` leaves one model without the provider's fallbacks). A value is the
list of `"PROVIDER/model"` targets tried in order. Provider names match in any case; a
model name is taken as written (it may hold a `/`: only the first one separates).

The configuration is read here and checked against the installed providers by
`build_registry`; the workflow asks for a job's targets only once the job has failed
(`fall_back`), and follows them once: a target's own fallbacks are not followed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import msgspec

from css_core.config import Target
from css_core.errors import CSSError, ProviderFailed, ProviderTimeout
from css_core.operations.record import JobRecord
from css_core.types import CSSRequest

if TYPE_CHECKING:
    from css_core.providers.registry import Provider, Registry

__all__ = ("VARIABLE", "Fallbacks", "fall_back")

T = TypeVar("T")
logger = logging.getLogger("css_core.jobs.pipeline")

VARIABLE = "CSS_FALLBACKS"


class Fallbacks:
    """The configured fallbacks, resolved for one job at a time."""

    def __init__(self, fallbacks: Mapping[str, tuple[Target, ...]]) -> None:
        self._fallbacks = dict(fallbacks)

    def __bool__(self) -> bool:
        return bool(self._fallbacks)

    def targets(self, provider: str, model: str) -> tuple[Target, ...]:
        """The targets of a job for `provider` (its name as registered) and `model`, in order."""
        if not self._fallbacks:
            return ()
        name = provider.upper()
        exact = self._fallbacks.get(f"{name}/{model}")
        return exact if exact is not None else self._fallbacks.get(name, ())


def _can_take(provider: Provider, request: CSSRequest, target: Target) -> bool:
    """Whether a target can take the job: served here, with the job's endpoint (and streams)."""
    if not provider.served:
        why = provider.unavailable_reason()
    elif request.endpoint not in provider.spec.endpoints:
        why = f"it has no {request.endpoint!r} endpoint"
    elif request.stream and not provider.streams:
        why = "it cannot stream"
    else:
        return True
    logger.info("fallback %s skipped: %s", target, why)
    return False


async def fall_back(
    registry: Registry, fallbacks: Fallbacks, record: JobRecord, request: CSSRequest, failure: CSSError,
    start: Callable[[CSSRequest, bool], Awaitable[T]],
) -> T:
    """The job at its fallbacks, in order, once its own provider failed with `failure`.

    `start(request, more)` runs the job redirected to one target (`more`: whether targets
    follow it); the first to answer wins. A passed deadline ends the chain; when no target
    could be tried, the job ends with its own failure; else a 502 names each one tried.
    """
    targets = () if isinstance(failure, ProviderTimeout) else fallbacks.targets(request.provider, request.model)
    if not targets:
        raise failure
    own = registry.by_name(request.provider).spec.name
    tried = [(f"{own}/{request.model}", failure.message)]
    seen = {(own.upper(), request.model)}
    for number, target in enumerate(targets, 1):
        provider = registry.by_name(target.provider)
        if (target.provider, target.model) in seen or not _can_take(provider, request, target):
            continue
        seen.add((target.provider, target.model))
        logger.warning("%s failed; falling back to %s (%s)", tried[-1][0], target, tried[-1][1])
        redirected = msgspec.structs.replace(request, provider=provider.spec.name, model=target.model)
        record.fallback(tried[-1][0].split("/", 1)[0], provider.spec.name, target.model)
        try:
            return await start(redirected, number < len(targets))
        except ProviderTimeout:
            raise
        except CSSError as exc:
            tried.append((str(target), exc.message))
    if len(tried) == 1:
        raise failure
    raise ProviderFailed("no provider could answer the job: " + "; ".join(f"{n}: {m}" for n, m in tried))
