"""Plugin discovery and the registry of providers the workflow asks by name or on-chain id.

Each entry point of the `css_inference_service` group is loaded on its own: one that
fails to import, or whose `css_provider` hook raises, is reported by name and left out
while the others serve. A hook whose name no hookspec knows (a misspelling) stops start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from css_core import hookspecs
from css_core.config import Settings
from css_core.errors import ConfigError, ProviderNotAvailable
from css_core.types import ProviderSpec

__all__ = ("ENTRY_POINT_GROUP", "PluginInfo", "Provider", "Registry", "build_registry", "plugin_manager")

ENTRY_POINT_GROUP = "css_inference_service"
_PER_JOB_HOOKS = ("css_encode_params", "css_call", "css_call_stream", "css_postprocess", "css_parse_stream_event")
logger = logging.getLogger("css_core")
# the on-chain ids of the providers this project ships (DESIGN.md), to name one whose plugin is missing
_SHIPPED_PROVIDERS = {0: "OPENAI", 1: "GOOSEAI", 2: "PERPLEXITYAI"}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from, for messages and `css-inference-service plugins`."""

    name: str
    distribution: str = "(registered in code)"
    version: str = ""

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}".strip()


@dataclass
class Provider:
    """A provider as one worker serves it: its spec, where to call it, and its hooks.

    `models` is its effective catalogue: the plugin's, as `CSS_MODELS` / `CSS_EXTRA_MODELS`
    replace or extend it.
    """

    spec: ProviderSpec
    plugin: PluginInfo
    base_url: str
    api_key: str | None = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    # per-job hooks, restricted to this provider's plugin (and provider-less plugins); a hook
    # no plugin implements is absent, so the workflow skips it (or makes the call itself)
    hooks: Mapping[str, Callable[..., Any]] = field(repr=False, default_factory=dict)
    models: tuple[str, ...] = ()
    in_flight: int = 0  # calls this worker has open to the provider now

    @property
    def served(self) -> bool:
        return self.api_key is not None

    @property
    def streams(self) -> bool:
        """Whether a plugin reads this provider's streamed events (`css_parse_stream_event`)."""
        return "css_parse_stream_event" in self.hooks

    def unavailable_reason(self) -> str:
        return f"{self.spec.api_key_env} is not set"


def plugin_manager(load_entry_points: bool = True) -> tuple[pluggy.PluginManager, dict[str, PluginInfo], list[str]]:
    """A plugin manager with every installed plugin.

    Returns the manager, what is known of each plugin by its registered name, and the
    load errors of the plugins left out.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    errors: list[str] = []
    if load_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            info = PluginInfo(ep.name, dist.name if dist else "(unknown)", dist.version if dist else "")
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # any failure of a third party's code is reported, not fatal
                errors.append(f"plugin {ep.name!r} from {info} failed to load: {exc!r}")
                logger.error(errors[-1])
                continue
            infos[ep.name] = info
    return pm, infos, errors


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin)!r} implements an unknown hook: {exc}") from None


class Registry:
    """The providers of this service, by name and by on-chain id."""

    def __init__(self, providers: list[Provider], errors: list[str]) -> None:
        self.providers = providers
        self.errors = errors
        self._by_name = {p.spec.name.upper(): p for p in providers}
        self._by_onchain_id = {p.spec.onchain_id: p for p in providers}

    def by_name(self, name: str) -> Provider:
        provider = self._by_name.get(name.upper())
        if provider is None:
            raise ProviderNotAvailable(f"provider {name!r} is not installed in this service{self._installed()}")
        return provider

    def by_onchain_id(self, provider_id: int) -> Provider:
        provider = self._by_onchain_id.get(provider_id)
        if provider is None:
            name = _SHIPPED_PROVIDERS.get(provider_id)
            which = f"on-chain id {provider_id}" + (f" ({name})" if name else "")
            raise ProviderNotAvailable(f"no provider with {which} is installed{self._installed()}")
        return provider

    def _installed(self) -> str:
        names = ", ".join(f"{p.spec.name} ({p.spec.onchain_id})" for p in self.providers)
        return f" (installed: {names})" if names else " (no provider plugin is installed)"


def _first_result(caller: pluggy.HookCaller) -> Callable[..., Any]:
    """A per-job hook bound once: its implementations asked in pluggy's order until one answers.

    pluggy finds and orders the implementations on every call (~3 µs; a stream calls a hook
    per event), so this is done once here. A hook with a wrapper stays a pluggy call.
    """
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return caller
    chain = [(impl.function, impl.argnames) for impl in reversed(impls)]  # pluggy calls the last first

    def first_result(**kwargs: Any) -> Any:
        for function, argnames in chain:
            result = function(*[kwargs[name] for name in argnames])
            if result is not None:
                return result
        return None

    return first_result


def _base_url(spec: ProviderSpec, settings: Settings) -> str:
    variable = spec.base_url_variable
    url = (settings.get(variable) or spec.default_base_url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{variable} must be an http:// or https:// URL, got {url!r}")
    return url


def _catalogue(spec: ProviderSpec, settings: Settings) -> tuple[str, ...]:
    name = spec.name.upper()
    models = (*settings.models.get(name, spec.models), *settings.extra_models.get(name, ()))
    return tuple(dict.fromkeys(models))  # without duplicates, in order


def build_registry(
    settings: Settings,
    pm: pluggy.PluginManager | None = None,
    infos: dict[str, PluginInfo] | None = None,
    errors: list[str] | None = None,
) -> Registry:
    """Ask every plugin for its provider, check for clashes, and bind each one's hooks."""
    if pm is None:
        pm, infos, errors = plugin_manager()
    infos = infos or {}
    errors = list(errors or [])
    _check_pending(pm)

    owners: list[tuple[object, ProviderSpec, PluginInfo]] = []
    for impl in pm.hook.css_provider.get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        info = infos.get(name, PluginInfo(name))
        try:
            spec = impl.function()
            if spec is not None and not isinstance(spec, ProviderSpec):
                raise TypeError(f"css_provider returned {type(spec).__name__}, not ProviderSpec")
        except Exception as exc:  # a third party's bug: report it, serve the rest
            errors.append(f"plugin {name!r} from {info} failed to describe its provider: {exc!r}")
            logger.error(errors[-1])
            pm.unregister(impl.plugin)
            continue
        if spec is not None:
            if not 0 <= spec.onchain_id <= 255:
                raise ConfigError(
                    f"plugin {name!r} from {info}: on-chain id of {spec.name} must be 0-255, got {spec.onchain_id}"
                )
            for _, other, other_info in owners:
                if other.name.upper() == spec.name.upper() or other.onchain_id == spec.onchain_id:
                    raise ConfigError(
                        f"plugin {other_info.name!r} from {other_info} and plugin {name!r} from {info} "
                        f"both claim provider {spec.name!r} "
                        f"(on-chain ids {other.onchain_id} and {spec.onchain_id}); uninstall one of them"
                    )
            owners.append((impl.plugin, spec, info))

    providers = []
    for plugin, spec, info in owners:
        others = [p for p, _, _ in owners if p is not plugin]
        api_key = settings.get(spec.api_key_env)
        headers = {"content-type": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        callers = {name: pm.subset_hook_caller(name, remove_plugins=others) for name in _PER_JOB_HOOKS}
        hooks = {name: _first_result(caller) for name, caller in callers.items() if caller.get_hookimpls()}
        models = _catalogue(spec, settings)
        providers.append(Provider(spec, info, _base_url(spec, settings), api_key, headers, hooks, models))
    names = {spec.name.upper() for _, spec, _ in owners}
    for variable, catalogues in (("CSS_MODELS", settings.models), ("CSS_EXTRA_MODELS", settings.extra_models)):
        if unknown := sorted(set(catalogues) - names):
            logger.warning("%s names providers that are not installed: %s", variable, ", ".join(unknown))
    return Registry(sorted(providers, key=lambda p: p.spec.onchain_id), errors)
