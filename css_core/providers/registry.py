"""Plugin discovery and the registry of providers the workflow asks by name or on-chain id.

Each entry point of the `css_inference_service` group is loaded on its own: one that
fails to import, or whose `css_provider` hook raises, is reported by name and left out
while the others serve. A hook whose name no hookspec knows (a misspelling) stops start-up.
The providers of `CSS_OPENAI_COMPATIBLE` are registered here too, one plugin object each
(`css_core.providers.compatible`), and checked for clashes like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from css_core.config import Settings
from css_core.errors import ConfigError, ProviderNotAvailable
from css_core.providers import compatible, default_call, hookspecs
from css_core.providers.keys import KeyPool, scrubber
from css_core.types import ProviderSpec

__all__ = ("Hooks", "PluginInfo", "Provider", "Registry", "build_registry", "plugin_manager")

logger = logging.getLogger("css_core")
# the on-chain ids of the providers this project ships, to name one whose plugin is missing
_SHIPPED_PROVIDERS = {0: "OPENAI", 1: "GOOSEAI", 2: "PERPLEXITYAI", 3: "ANTHROPIC", 4: "GEMINI", 5: "AZURE"}


_IN_CODE = "(registered in code)"
_NO_OPTIONS: dict[str, Any] = {}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from, for messages and `css-inference-service plugins`."""

    name: str
    distribution: str = _IN_CODE
    version: str = ""

    def __str__(self) -> str:
        if self.distribution == _IN_CODE:
            return f"{self.name!r}, registered in code"
        return f"{self.distribution} {self.version}".strip()


@dataclass(frozen=True)
class Hooks:
    """A provider's per-job hooks, each a pluggy `HookCaller` restricted to its own plugin
    (and to plugins that own no provider, such as the core's call)."""

    encode_params: pluggy.HookCaller
    encode_answer_format: pluggy.HookCaller
    encode_options: pluggy.HookCaller
    call: pluggy.HookCaller
    call_stream: pluggy.HookCaller
    read_error: pluggy.HookCaller
    postprocess: pluggy.HookCaller
    parse_stream_event: pluggy.HookCaller
    usage: pluggy.HookCaller
    stream_without_text: pluggy.HookCaller


def _hooks(pm: pluggy.PluginManager, others: list[object]) -> Hooks:
    def caller(name: str) -> pluggy.HookCaller:
        return pm.subset_hook_caller(name, remove_plugins=others)

    return Hooks(
        encode_params=caller("css_encode_params"),
        encode_answer_format=caller("css_encode_answer_format"),
        encode_options=caller("css_encode_options"),
        call=caller("css_call"),
        call_stream=caller("css_call_stream"),
        read_error=caller("css_read_error"),
        postprocess=caller("css_postprocess"),
        parse_stream_event=caller("css_parse_stream_event"),
        usage=caller("css_usage"),
        stream_without_text=caller("css_stream_without_text"),
    )


@dataclass
class Provider:
    """A provider as one worker serves it: its spec, where to call it, its keys and its hooks.

    `models` is its effective catalogue: the plugin's, as `CSS_MODELS` / `CSS_EXTRA_MODELS`
    replace or extend it. `options` are the body fields every job starts from: the
    plugin's `default_options` under the operator's defaults for this provider. `pool`
    says which of its keys the next attempt uses (`css_core.providers.keys`). A spec whose
    `api_key_env` is empty needs no key: it is served without one, and sends no key header.
    `base_url` is empty only for a provider that is not served and has no base URL to call.
    """

    spec: ProviderSpec
    plugin: PluginInfo
    base_url: str
    keys: tuple[str, ...] = field(repr=False)
    hooks: Hooks = field(repr=False)
    models: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # by endpoint
    in_flight: int = 0  # calls this worker has open to the provider now
    key_disable_seconds: float = 600.0  # how long a refused key is set aside (CSS_KEY_DISABLE_SECONDS)

    def __post_init__(self) -> None:
        spec = self.spec
        self.headers = {"content-type": "application/json", **spec.headers}
        self._auth = [f"{spec.auth_scheme} {key}" if spec.auth_scheme else key for key in self.keys]
        self.pool = KeyPool(len(self.keys), self.key_disable_seconds)
        self.scrub = scrubber(self.keys)  # the provider's text without its keys, even masked

    @property
    def needs_key(self) -> bool:
        return bool(self.spec.api_key_env)

    @property
    def served(self) -> bool:
        return bool(self.keys) or not self.needs_key

    @property
    def streams(self) -> bool:
        """Whether a plugin reads this provider's streamed events (`css_parse_stream_event`)."""
        return any(impl.plugin is not default_call for impl in self.hooks.parse_stream_event.get_hookimpls())

    @property
    def types_answers(self) -> bool:
        """Whether a plugin asks this provider for typed answers (`css_encode_answer_format`)."""
        return bool(self.hooks.encode_answer_format.get_hookimpls())

    def unavailable_reason(self) -> str:
        return f"{self.spec.api_key_env} is not set"

    def options_for(self, endpoint: str) -> dict[str, Any]:
        """The body fields a job for `endpoint` starts from (the job's `extra_args` go over them)."""
        return self.options.get(endpoint, _NO_OPTIONS)

    def headers_for(self, key: int) -> dict[str, str]:
        """A new dict of the headers of one call with key number `key`."""
        if not self._auth:
            return {**self.headers}
        return {**self.headers, self.spec.auth_header: self._auth[key]}

    @property
    def onchain(self) -> bool:
        """Whether on-chain jobs can reach it (a configured compatible provider may have no id)."""
        return self.spec.onchain_id != compatible.NO_ONCHAIN_ID



def plugin_manager(load_entry_points: bool = True) -> tuple[pluggy.PluginManager, dict[str, PluginInfo], list[str]]:
    """A plugin manager with every installed plugin.

    Returns the manager, what is known of each plugin by its registered name, and the
    load errors of the plugins left out.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(default_call, name="css_core.providers.default_call")  # the core's own call, asked last
    infos: dict[str, PluginInfo] = {}
    errors: list[str] = []
    if load_entry_points:
        for ep in entry_points(group=hookspecs.PROJECT):
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
    """The providers of this service, by name and by on-chain id, and the plugin manager."""

    def __init__(self, pm: pluggy.PluginManager, providers: list[Provider], errors: list[str]) -> None:
        self.pm = pm
        self.providers = providers
        self.errors = errors
        self._by_name = {p.spec.name.upper(): p for p in providers}
        self._by_onchain_id = {p.spec.onchain_id: p for p in providers if p.onchain}

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
        names = ", ".join(f"{p.spec.name} ({p.spec.onchain_id if p.onchain else 'off-chain only'})"
                          for p in self.providers)
        return f" (installed: {names})" if names else " (no provider plugin is installed)"


def _base_url(spec: ProviderSpec, settings: Settings, served: bool, info: PluginInfo) -> str:
    """Where to call the provider: its variable, else the plugin's default. A provider without
    either stops start-up if it would be served, and is otherwise left unserved with no URL."""
    variable = spec.base_url_variable
    url = settings.get(variable) or spec.default_base_url
    if url is None:
        if not served:
            return ""  # never called: its jobs are refused for the missing key
        unset_key = f", or unset {spec.api_key_env} not to serve it" if spec.api_key_env else ""
        raise ConfigError(f"{variable} is not set: {spec.name} (plugin {info}) has no default base URL; set it to the "
                          f"provider's endpoint (an http:// or https:// URL){unset_key}")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{variable} must be an http:// or https:// URL, got {url!r}")
    return url


def _catalogue(spec: ProviderSpec, settings: Settings) -> tuple[str, ...]:
    name = spec.name.upper()
    models = (*settings.models.get(name, spec.models), *settings.extra_models.get(name, ()))
    return tuple(dict.fromkeys(models))  # without duplicates, in order


def _keys(spec: ProviderSpec, settings: Settings) -> tuple[str, ...]:
    """The provider's keys: its variable may hold several, separated by commas."""
    return tuple(key.strip() for key in (settings.get(spec.api_key_env) or "").split(",") if key.strip())


def _options(spec: ProviderSpec, settings: Settings) -> dict[str, dict[str, Any]]:
    """The body fields each endpoint's jobs start from: the plugin's `default_options`, under
    the operator's defaults for that provider and endpoint."""
    options = {endpoint: {**spec.default_options, **settings.defaults_for(spec.name, endpoint)}
               for endpoint in spec.endpoints}
    for endpoint, fields in options.items():
        if reserved := sorted(fields.keys() & spec.job_fields):
            raise ConfigError(f"CSS_INF_WORKFLOW_KW_ARGS sets {', '.join(reserved)} for {spec.name} {endpoint}: "
                              "these are built from each job")
    return options


_Owner = tuple[object, ProviderSpec, PluginInfo]  # a provider-owning plugin, its spec, where it came from


def _describe_providers(
    pm: pluggy.PluginManager, settings: Settings, infos: dict[str, PluginInfo], errors: list[str]
) -> list[_Owner]:
    """Each provider-owning plugin with its spec; clashes stop start-up, a raising plugin is left out."""
    owners: list[_Owner] = []
    plugins = [impl.plugin for impl in pm.hook.css_provider.get_hookimpls()]
    for plugin in plugins:
        name = pm.get_name(plugin) or repr(plugin)
        info = infos.get(name, PluginInfo(name))
        own = pm.subset_hook_caller("css_provider", remove_plugins=[p for p in plugins if p is not plugin])
        try:
            spec = next(iter(own(config=settings)), None)
            if spec is not None and not isinstance(spec, ProviderSpec):
                raise TypeError(f"css_provider returned {type(spec).__name__}, not ProviderSpec")
        except ConfigError:
            raise
        except Exception as exc:  # a third party's bug: report it, serve the rest
            errors.append(f"plugin {name!r} from {info} failed to describe its provider: {exc!r}")
            logger.error(errors[-1])
            pm.unregister(plugin)
            continue
        if spec is None:
            continue
        configured = isinstance(plugin, compatible.CompatiblePlugin)
        if not 0 <= spec.onchain_id <= 255 and not (configured and spec.onchain_id == compatible.NO_ONCHAIN_ID):
            raise ConfigError(
                f"plugin {name!r} from {info}: on-chain id of {spec.name} must be 0-255, got {spec.onchain_id}"
            )
        for other_plugin, other, other_info in owners:
            _check_clash((other_plugin, other, other_info), (plugin, spec, info))
        owners.append((plugin, spec, info))
    return owners


def _check_clash(first: _Owner, second: _Owner) -> None:
    """Two plugins may not claim the same provider name (in any case) or on-chain id."""
    (plugin, spec, info), (other_plugin, other, other_info) = first, second
    same_name = other.name.upper() == spec.name.upper()
    if not same_name and not spec.onchain_id == other.onchain_id != compatible.NO_ONCHAIN_ID:
        return
    names = repr(spec.name) if same_name else f"{spec.name!r} / {other.name!r}"
    configured = any(isinstance(p, compatible.CompatiblePlugin) for p in (plugin, other_plugin))
    remedy = f"rename or remove the one in {compatible.VARIABLE}" if configured else "uninstall one of them"
    raise ConfigError(
        f"plugin {info.name!r} from {info} and plugin {other_info.name!r} from {other_info} both claim provider "
        f"{names} (on-chain ids {spec.onchain_id} and {other.onchain_id}); {remedy}"
    )


def _check_fallbacks(settings: Settings, installed: set[str]) -> None:
    """`CSS_FALLBACKS` may name only installed providers (`installed`: upper case)."""
    for key, targets in settings.fallbacks.items():
        for provider in (key.partition("/")[0], *(target.provider for target in targets)):
            if provider not in installed:
                names = ", ".join(sorted(installed)) or "none"
                raise ConfigError(
                    f"CSS_FALLBACKS names provider {provider!r}, which is not installed (installed: {names})"
                )


def _register_compatible(pm: pluggy.PluginManager, settings: Settings, infos: dict[str, PluginInfo]) -> None:
    """Register one plugin object per provider of `CSS_OPENAI_COMPATIBLE`."""
    for name, entry in settings.compatible.items():
        registered = f"{compatible.VARIABLE}:{name}"
        if pm.get_plugin(registered) is not None:  # a registry built again on the same manager
            pm.unregister(name=registered)
        pm.register(compatible.CompatiblePlugin(name, entry), name=registered)
        infos[registered] = PluginInfo(registered, compatible.VARIABLE)


def build_registry(
    settings: Settings,
    pm: pluggy.PluginManager | None = None,
    infos: dict[str, PluginInfo] | None = None,
    errors: list[str] | None = None,
) -> Registry:
    """Ask every plugin for its provider, check for clashes, and bind each one's hooks."""
    if pm is None:
        pm, infos, errors = plugin_manager()
    errors = list(errors or [])
    infos = dict(infos or {})
    _register_compatible(pm, settings, infos)
    _check_pending(pm)
    owners = _describe_providers(pm, settings, infos, errors)

    providers = []
    for plugin, spec, info in owners:
        hooks = _hooks(pm, [p for p, _, _ in owners if p is not plugin])
        provider = Provider(spec, info, "", _keys(spec, settings), hooks, _catalogue(spec, settings),
                            _options(spec, settings), key_disable_seconds=settings.key_disable_seconds)
        provider.base_url = _base_url(spec, settings, provider.served, info)
        providers.append(provider)
    names = {spec.name.upper() for _, spec, _ in owners}
    _check_fallbacks(settings, names)
    scoped = (("CSS_MODELS", settings.models), ("CSS_EXTRA_MODELS", settings.extra_models),
              ("CSS_INF_WORKFLOW_KW_ARGS", settings.scoped_providers))
    for variable, by_provider in scoped:
        if unknown := sorted(set(by_provider) - names):
            logger.warning("%s names providers that are not installed: %s", variable, ", ".join(unknown))
    # providers without an on-chain id (configured ones may have none) are listed last
    providers.sort(key=lambda p: (not p.onchain, p.spec.onchain_id, p.spec.name))
    return Registry(pm, providers, errors)
