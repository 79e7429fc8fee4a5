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
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, TypeVar

import msgspec

from css_core.errors import ConfigError, CSSError, ProviderFailed, ProviderTimeout
from css_core.record import current
from css_core.types import CSSRequest

if TYPE_CHECKING:
    from css_core.plugins import Provider, Registry

__all__ = ("VARIABLE", "Fallbacks", "Target", "fall_back", "parse_fallbacks")

T = TypeVar("T")
logger = logging.getLogger("css_core.workflow")

VARIABLE = "CSS_FALLBACKS"
EXPECTED = 'a JSON object {"PROVIDER/model" or "PROVIDER": ["PROVIDER/model", ...]}'


class Target(msgspec.Struct, frozen=True):
    """A provider (upper case) and one of its models, which a job may fall back to."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


def _split(text: str, what: str, model_required: bool) -> tuple[str, str]:
    provider, slash, model = text.strip().partition("/")
    provider = provider.strip()
    if not provider or any(c.isspace() for c in provider) or (slash and not model) or (model_required and not slash):
        shape = '"PROVIDER/model"' if model_required else '"PROVIDER/model" or "PROVIDER"'
        raise ConfigError(f"{VARIABLE}: {what} {text!r} must be {shape}")
    return provider.upper(), model


def parse_fallbacks(raw: Mapping[str, list[str]]) -> dict[str, tuple[Target, ...]]:
    """The decoded `CSS_FALLBACKS`, keyed `"PROVIDER/model"` or `"PROVIDER"` (upper case)."""
    fallbacks: dict[str, tuple[Target, ...]] = {}
    for key, targets in raw.items():
        provider, model = _split(key, "key", model_required=False)
        name = f"{provider}/{model}" if model else provider
        if name in fallbacks:
            raise ConfigError(f"{VARIABLE} names {name!r} twice (provider names match in any case)")
        fallbacks[name] = tuple(Target(*_split(target, "target", model_required=True)) for target in targets)
    return fallbacks


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

    def check(self, installed: Collection[str]) -> None:
        """Refuse a provider that is not installed, naming the variable (`installed`: upper case)."""
        for key, targets in self._fallbacks.items():
            for provider in (key.partition("/")[0], *(target.provider for target in targets)):
                if provider not in installed:
                    names = ", ".join(sorted(installed)) or "none"
                    raise ConfigError(
                        f"{VARIABLE} names provider {provider!r}, which is not installed (installed: {names})"
                    )


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
    registry: Registry, request: CSSRequest, failure: CSSError,
    start: Callable[[CSSRequest, bool], Awaitable[T]],
) -> T:
    """The job at its fallbacks, in order, once its own provider failed with `failure`.

    `start(request, more)` runs the job redirected to one target (`more`: whether targets
    follow it); the first to answer wins. A passed deadline ends the chain; when no target
    could be tried, the job ends with its own failure; else a 502 names each one tried.
    """
    targets = () if isinstance(failure, ProviderTimeout) else registry.fallbacks.targets(request.provider,
                                                                                          request.model)
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
        current().fallback(tried[-1][0].split("/", 1)[0], provider.spec.name, target.model)
        try:
            return await start(redirected, number < len(targets))
        except ProviderTimeout:
            raise
        except CSSError as exc:
            tried.append((str(target), exc.message))
    if len(tried) == 1:
        raise failure
    raise ProviderFailed("no provider could answer the job: " + "; ".join(f"{n}: {m}" for n, m in tried))
