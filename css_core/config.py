"""Configuration, read once at start-up from the environment and an optional `.env` file.

A variable set in the environment wins over the same one in `.env`. For the retry
policy, each field is taken from the first of these that sets it:

1. `CSS_REQUEST_TRIES`, `CSS_REQUEST_DELAY`, `CSS_REQUEST_MAX_DELAY`,
   `CSS_REQUEST_BACKOFF`, `CSS_REQUEST_JITTER` (the most specific);
2. the `retry_params` key of `CSS_INF_WORKFLOW_KW_ARGS`;
3. the older `RETRY_PARAMS`;
4. the defaults: 3 tries, 3 s delay, 10 s max delay, backoff 2, jitter [0.5, 1.5].

Beyond the reference container's variables, the service reads its own limits: `CSS_MAX_BODY_BYTES`
(largest job body, default 4 MiB), `CSS_MAX_MESSAGES` (per job, default 1024),
`CSS_MAX_IN_FLIGHT` (calls open to one provider per worker before new jobs get 503,
default 2048), `CSS_BEARER_TOKEN` (when set, every route but the probes `/health` and
`/ready` requires `Authorization: Bearer <token>`), `CSS_SHUTDOWN_GRACE` (seconds calls in
flight may take to finish after SIGTERM, default 30), `CSS_MAX_ANSWER_BYTES` (the largest
provider answer read, an error answer's included, default 8 MiB) and `CSS_MAX_EVENT_BYTES`
(the largest single server-sent event of a stream, default 1 MiB). An answer or an event
over its limit fails the job with a 502 naming the variable; an error answer over it is
read up to it and its text cut there.

A provider's model catalogue (what `/service-resources` lists and calls supported) is its
plugin's, unless `CSS_MODELS`, a JSON object `{"PROVIDER": ["model", ...]}`, replaces it
for the providers it names; `CSS_EXTRA_MODELS`, of the same shape, then adds models to
it. Provider names match in any case. A job may still name any model: the catalogue is
only what the node advertises.

`CSS_INF_WORKFLOW_KW_ARGS` holds the operator's defaults for the provider request bodies: a
key that is a provider's name (upper case) with an object value holds defaults for that
provider only, a key `completions` or `embeddings` (at the top or in a provider's object)
defaults for that endpoint only, and any other field is a completions default (never sent
to embeddings), e.g. `{"temperature": 0.2, "ANTHROPIC": {"max_tokens": 512}}`.
Routing (see `keys`, `routing`, `compatible`): a provider's key variable may hold several
comma-separated keys, used in turn; `CSS_KEY_DISABLE_SECONDS` (default 600, 0: never) is
how long a key the provider refused is set aside; `CSS_FALLBACKS` names the providers and
models a failed job falls back to; `CSS_OPENAI_COMPATIBLE` configures OpenAI-compatible
providers without a plugin package.

Operations (see `logs`, `budgets`, `budget_store`): `CSS_LOG_FORMAT` is `text` (the default)
or `json` (one JSON object a line); `CSS_BUDGETS` sets spending budgets; their counts are
kept in SQLite in `CSS_STATE_DIR` (default `${XDG_STATE_HOME:-~/.local/state}/css-inference-service`),
or in Redis at `CSS_REDIS_URL` when several replicas share them.

`SSL_CERT_FILE` names a PEM file of the certificate authorities the provider calls trust
(instead of the bundled ones): a TLS-intercepting egress proxy's CA, or a test CA.
`HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are honoured from the process environment.

Plugins read their own variables through the same object (`css_provider(config)`), with
`get`, `integer` and `number`, so that one that does not parse stops start-up naming it.

A variable that does not parse raises `ConfigError` naming it and what it expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import dotenv
import msgspec

from css_core.errors import ConfigError

__all__ = (
    "BUDGET_UNITS",
    "MAX_ANSWER_BYTES",
    "MAX_EVENT_BYTES",
    "Budget",
    "BudgetLimits",
    "CompatibleProvider",
    "RetryPolicy",
    "Settings",
    "Target",
    "load_settings",
    "parse_budgets",
    "parse_compatible",
    "parse_fallbacks",
    "read_dotenv",
)

_STREAM_DEADLINE_CAP = 55.0  # the node cuts a stream at 60 s
#: the largest provider answer read (`CSS_MAX_ANSWER_BYTES`) and streamed event (`CSS_MAX_EVENT_BYTES`)
MAX_ANSWER_BYTES = 8 * 1024 * 1024
MAX_EVENT_BYTES = 1024 * 1024


# -- CSS_FALLBACKS ----------------------------------------------------------------------------------------------

_FALLBACKS = "CSS_FALLBACKS"
_FALLBACKS_EXPECTED = 'a JSON object {"PROVIDER/model" or "PROVIDER": ["PROVIDER/model", ...]}'


class Target(msgspec.Struct, frozen=True):
    """A provider (upper case) and one of its models, which a job may fall back to."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


def _split_target(text: str, what: str, model_required: bool) -> tuple[str, str]:
    provider, slash, model = text.strip().partition("/")
    provider = provider.strip()
    if not provider or any(c.isspace() for c in provider) or (slash and not model) or (model_required and not slash):
        shape = '"PROVIDER/model"' if model_required else '"PROVIDER/model" or "PROVIDER"'
        raise ConfigError(f"{_FALLBACKS}: {what} {text!r} must be {shape}")
    return provider.upper(), model


def parse_fallbacks(raw: Mapping[str, list[str]]) -> dict[str, tuple[Target, ...]]:
    """The decoded `CSS_FALLBACKS`, keyed `"PROVIDER/model"` or `"PROVIDER"` (upper case).

    A model name is taken as written (it may hold a `/`: only the first one separates)."""
    fallbacks: dict[str, tuple[Target, ...]] = {}
    for key, targets in raw.items():
        provider, model = _split_target(key, "key", model_required=False)
        name = f"{provider}/{model}" if model else provider
        if name in fallbacks:
            raise ConfigError(f"{_FALLBACKS} names {name!r} twice (provider names match in any case)")
        fallbacks[name] = tuple(Target(*_split_target(target, "target", model_required=True)) for target in targets)
    return fallbacks


# -- CSS_OPENAI_COMPATIBLE --------------------------------------------------------------------------------------

_COMPATIBLE = "CSS_OPENAI_COMPATIBLE"
_COMPATIBLE_EXPECTED = 'a JSON object {"NAME": {"base_url": "https://...", "api_key_env": "VAR", "onchain_id": N, ...}}'
_COMPATIBLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class CompatibleProvider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of `CSS_OPENAI_COMPATIBLE` (`css_core.providers.compatible` serves it)."""

    base_url: Annotated[str, msgspec.Meta(min_length=1)]
    api_key_env: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    onchain_id: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    endpoints: Annotated[tuple[Literal["completions", "embeddings"], ...], msgspec.Meta(min_length=1)] = (
        "completions",
    )
    models: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = ()
    stream_usage: bool = True


def parse_compatible(raw: Mapping[str, CompatibleProvider]) -> dict[str, CompatibleProvider]:
    """The decoded `CSS_OPENAI_COMPATIBLE`, by upper-case name, checked."""
    providers: dict[str, CompatibleProvider] = {}
    for name, entry in raw.items():
        if not _COMPATIBLE_NAME.fullmatch(name):
            raise ConfigError(f"{_COMPATIBLE}: provider name {name!r} must be letters, digits and _ (a letter first)")
        if not entry.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{_COMPATIBLE}: base_url of {name} must be an http:// or https:// URL, "
                              f"got {entry.base_url!r}")
        if name.upper() in providers:
            raise ConfigError(f"{_COMPATIBLE} names provider {name.upper()!r} twice (names match in any case)")
        providers[name.upper()] = entry
    return providers


# -- CSS_BUDGETS ------------------------------------------------------------------------------------------------

_BUDGETS = "CSS_BUDGETS"
_BUDGETS_EXPECTED = 'a JSON object {"*" or "PROVIDER" or "PROVIDER/model": {"requests_per_hour": N, ...}}'

#: each budget unit: what it counts, and its window in seconds
BUDGET_UNITS: dict[str, tuple[Literal["requests", "tokens"], int]] = {
    "requests_per_minute": ("requests", 60),
    "requests_per_hour": ("requests", 3600),
    "requests_per_day": ("requests", 86400),
    "tokens_per_minute": ("tokens", 60),
    "tokens_per_hour": ("tokens", 3600),
    "tokens_per_day": ("tokens", 86400),
}
_Positive = Annotated[int, msgspec.Meta(ge=1)]


class BudgetLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One budget's limits as `CSS_BUDGETS` writes them."""

    requests_per_minute: _Positive | None = None
    requests_per_hour: _Positive | None = None
    requests_per_day: _Positive | None = None
    tokens_per_minute: _Positive | None = None
    tokens_per_hour: _Positive | None = None
    tokens_per_day: _Positive | None = None


class Budget(msgspec.Struct, frozen=True):
    """One limit of one budget: `key` as written in `CSS_BUDGETS`, and one of its units."""

    key: str
    provider: str | None  # upper case; None for "*"
    model: str | None  # None for "*" and "PROVIDER"
    unit: str
    limit: int

    @property
    def requests(self) -> bool:
        """Whether it counts requests (else tokens)."""
        return BUDGET_UNITS[self.unit][0] == "requests"

    @property
    def seconds(self) -> int:
        return BUDGET_UNITS[self.unit][1]


def parse_budgets(raw: Mapping[str, BudgetLimits]) -> tuple[Budget, ...]:
    """The decoded `CSS_BUDGETS`, one `Budget` per limit it sets."""
    budgets: list[Budget] = []
    seen: set[str] = set()
    for key, limits in raw.items():
        provider: str | None = None
        model: str | None = None
        if key != "*":
            name, slash, rest = key.partition("/")
            if not name.strip() or name != name.strip() or any(c.isspace() for c in name) or (slash and not rest):
                raise ConfigError(f'{_BUDGETS}: key {key!r} must be "*", "PROVIDER" or "PROVIDER/model"')
            provider, model = name.upper(), (rest if slash else None)
        canonical = "*" if provider is None else provider + (f"/{model}" if model is not None else "")
        if canonical in seen:
            raise ConfigError(f"{_BUDGETS} names {key!r} twice (provider names match in any case)")
        seen.add(canonical)
        set_limits = [(unit, getattr(limits, unit)) for unit in BUDGET_UNITS if getattr(limits, unit) is not None]
        if not set_limits:
            raise ConfigError(f"{_BUDGETS}: {key!r} sets no limit (expected any of {', '.join(BUDGET_UNITS)})")
        budgets.extend(Budget(key, provider, model, unit, limit) for unit, limit in set_limits)
    return tuple(budgets)


class RetryPolicy(msgspec.Struct, frozen=True):
    """Attempt `tries` times; wait `delay * backoff**n`, capped at `max_delay`, plus jitter."""

    tries: int = 3
    delay: float = 3.0
    max_delay: float = 10.0
    backoff: float = 2.0
    jitter: tuple[float, float] = (0.5, 1.5)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment."""

    environ: Mapping[str, str]
    default_provider: str = "OPENAI"
    default_endpoint: str = "completions"
    # CSS_INF_WORKFLOW_KW_ARGS: body defaults by (upper-case provider name or "*", endpoint)
    request_defaults: dict[tuple[str, str], dict[str, Any]] = {}
    retry: RetryPolicy = RetryPolicy()
    request_timeout: float = 60.0
    job_deadline: float = 150.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 1024
    max_in_flight: int = 2048
    bearer_token: str | None = None
    shutdown_grace: float = 30.0
    max_answer_bytes: int = MAX_ANSWER_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    models: dict[str, tuple[str, ...]] = {}  # by upper-case provider name: replaces its catalogue
    extra_models: dict[str, tuple[str, ...]] = {}  # ... and extends it
    key_disable_seconds: float = 600.0
    fallbacks: dict[str, tuple[Target, ...]] = {}  # by "PROVIDER/model" or "PROVIDER" (upper case)
    compatible: dict[str, CompatibleProvider] = {}  # by upper-case name
    log_format: str = "text"  # or "json" (CSS_LOG_FORMAT)
    budgets: tuple[Budget, ...] = ()  # CSS_BUDGETS, one per limit
    state_dir: str = ""  # CSS_STATE_DIR: where the budgets' SQLite store lives
    redis_url: str | None = None  # CSS_REDIS_URL: the budgets' store shared by replicas

    def __repr__(self) -> str:
        # `environ` holds the API keys: never let a repr carry them into a log
        fields = (f for f in self.__struct_fields__ if f not in ("environ", "bearer_token", "redis_url"))
        return "Settings(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in fields) + ")"

    @property
    def stream_deadline(self) -> float:
        return min(self.job_deadline, _STREAM_DEADLINE_CAP)

    def get(self, name: str, default: str | None = None) -> str | None:
        """A variable's value; `default` when unset or empty."""
        return self.environ.get(name) or default

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        """A whole-number variable, at least `minimum`; `default` when unset."""
        value = _number(self.environ, name, int, minimum)
        return default if value is None else int(value)

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        """A numeric variable, at least `minimum`; `default` when unset."""
        value = _number(self.environ, name, float, minimum)
        return default if value is None else float(value)

    def defaults_for(self, provider: str, endpoint: str = "completions") -> dict[str, Any]:
        """The operator's body defaults for `provider`'s `endpoint`: the shared ones, then the
        provider's own over them."""
        defaults = self.request_defaults
        return {**defaults.get(("*", endpoint), {}), **defaults.get((provider.upper(), endpoint), {})}

    @property
    def scoped_providers(self) -> set[str]:
        """The providers `CSS_INF_WORKFLOW_KW_ARGS` scopes defaults to."""
        return {provider for provider, _ in self.request_defaults if provider != "*"}


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a `.env` file, as python-dotenv reads them (quotes, comments, `export`),
    taken literally: a `$` in a key is not expanded."""
    if not path.is_file():
        return {}
    values = dotenv.dotenv_values(path, interpolate=False, encoding="utf-8")
    return {key: value for key, value in values.items() if value is not None}


def _json(environ: Mapping[str, str], name: str, expected: str, type_: Any) -> Any:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{name} must be {expected}, got {raw!r} ({exc})") from None


def _kind(type_: type) -> str:
    return "a whole number" if type_ is int else "a number"


def _number(environ: Mapping[str, str], name: str, type_: type, minimum: float) -> Any:
    value = _json(environ, name, f"{_kind(type_)} >= {minimum:g}", type_)
    if value is not None and value < minimum:
        raise ConfigError(f"{name} must be {_kind(type_)} >= {minimum:g}, got {value!r}")
    return value


_LIMITS = (
    ("max_body_bytes", "CSS_MAX_BODY_BYTES", int, 1),
    ("max_messages", "CSS_MAX_MESSAGES", int, 1),
    ("max_in_flight", "CSS_MAX_IN_FLIGHT", int, 1),
    ("shutdown_grace", "CSS_SHUTDOWN_GRACE", float, 0),
    ("key_disable_seconds", "CSS_KEY_DISABLE_SECONDS", float, 0),
    ("max_answer_bytes", "CSS_MAX_ANSWER_BYTES", int, 1),
    ("max_event_bytes", "CSS_MAX_EVENT_BYTES", int, 1),
)
_RETRY_FIELDS = {"tries": (int, 1), "delay": (float, 0), "max_delay": (float, 0), "backoff": (float, 0)}


def _retry_fields(params: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if not params:
        return {}
    fields: dict[str, Any] = {}
    for key, value in params.items():
        if key == "jitter":
            fields[key] = _jitter(value, name)
        elif key in _RETRY_FIELDS:
            type_, minimum = _RETRY_FIELDS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                raise ConfigError(f"{name}: {key} must be {_kind(type_)} >= {minimum}, got {value!r}")
            if type_ is int and value != int(value):
                raise ConfigError(f"{name}: {key} must be {_kind(type_)}, got {value!r}")
            fields[key] = type_(value)
        else:
            known = sorted([*_RETRY_FIELDS, "jitter"])
            raise ConfigError(f"{name}: unknown retry parameter {key!r} (expected one of {known})")
    return fields


def _jitter(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise ConfigError(f"{name}: jitter must be a JSON list [low, high] with 0 <= low <= high, got {value!r}")
    return float(value[0]), float(value[1])


_PROVIDER_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_CATALOGUE = dict[str, list[Annotated[str, msgspec.Meta(min_length=1)]]]


def _catalogues(environ: Mapping[str, str], name: str) -> dict[str, tuple[str, ...]]:
    expected = 'a JSON object {"PROVIDER": ["model", ...]}'
    catalogues = _json(environ, name, expected, _CATALOGUE) or {}
    return {provider.upper(): tuple(models) for provider, models in catalogues.items()}


def _fallbacks(environ: Mapping[str, str]) -> dict[str, tuple[Target, ...]]:
    raw = _json(environ, _FALLBACKS, _FALLBACKS_EXPECTED, dict[str, list[str]])
    return parse_fallbacks(raw or {})


def _compatible(environ: Mapping[str, str]) -> dict[str, CompatibleProvider]:
    raw = _json(environ, _COMPATIBLE, _COMPATIBLE_EXPECTED, dict[str, CompatibleProvider])
    return parse_compatible(raw or {})


def _operations(environ: Mapping[str, str]) -> dict[str, Any]:
    """`CSS_LOG_FORMAT`, `CSS_BUDGETS`, `CSS_STATE_DIR` and `CSS_REDIS_URL`."""
    log_format = (environ.get("CSS_LOG_FORMAT") or "text").strip().lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f"CSS_LOG_FORMAT must be text or json, got {environ['CSS_LOG_FORMAT']!r}")
    raw = _json(environ, _BUDGETS, _BUDGETS_EXPECTED, dict[str, BudgetLimits])
    redis_url = environ.get("CSS_REDIS_URL") or None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        scheme = redis_url.partition("://")[0] if "://" in redis_url else "none"  # the URL may hold a password
        raise ConfigError(f"CSS_REDIS_URL must be a redis://, rediss:// or unix:// URL, got one with scheme {scheme!r}")
    # the XDG base directory rule: an unset or relative XDG_STATE_HOME means ~/.local/state
    state_home = environ.get("XDG_STATE_HOME") or ""
    state_home = state_home if os.path.isabs(state_home) else os.path.expanduser("~/.local/state")
    return {
        "log_format": log_format,
        "budgets": parse_budgets(raw or {}),
        "state_dir": environ.get("CSS_STATE_DIR") or os.path.join(state_home, "css-inference-service"),
        "redis_url": redis_url,
    }


#: the endpoints a default may be scoped to in `CSS_INF_WORKFLOW_KW_ARGS`
ENDPOINTS = ("completions", "embeddings")
_KW_ARGS = "CSS_INF_WORKFLOW_KW_ARGS"


def _scoped(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{_KW_ARGS}: {where} must hold a JSON object of body defaults, got {value!r}")
    return value


def _request_defaults(kw_args: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """`CSS_INF_WORKFLOW_KW_ARGS` by (provider or "*", endpoint).

    A key that is a provider's name (upper case) holds that provider's defaults; a key that is
    an endpoint's name (`completions`, `embeddings`), at the top or inside a provider's object,
    holds that endpoint's. Any other field is a completions default: a chat option such as
    `temperature` is never sent to an embeddings endpoint, which refuses it."""
    defaults: dict[tuple[str, str], dict[str, Any]] = {}

    def add(provider: str, fields: Mapping[str, Any], where: str) -> None:
        for name, value in fields.items():
            if name in ENDPOINTS:
                scope = defaults.setdefault((provider, name), {})
                scope.update(_scoped(value, f"{where}{name} (an endpoint's name)"))
            elif provider == "*" and _PROVIDER_NAME.fullmatch(name):
                add(name, _scoped(value, f"{name} (a provider's name)"), f"{name}.")
            else:
                defaults.setdefault((provider, "completions"), {})[name] = value

    add("*", kw_args, "")
    return {scope: fields for scope, fields in defaults.items() if fields}


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Read and validate the whole configuration."""
    env = dict(read_dotenv(dotenv)) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)

    expected = 'a JSON list ["PROVIDER", "endpoint"]'
    positional = _json(env, "CSS_INF_WORKFLOW_POSITIONAL_ARGS", expected, list[str])
    if positional is not None and len(positional) != 2:
        raise ConfigError(f"CSS_INF_WORKFLOW_POSITIONAL_ARGS must be {expected}, got {positional!r}")
    kw_args = dict(_json(env, "CSS_INF_WORKFLOW_KW_ARGS", "a JSON object", dict[str, Any]) or {})
    retry_params = kw_args.pop("retry_params", None)
    if retry_params is not None and not isinstance(retry_params, dict):
        raise ConfigError(f"CSS_INF_WORKFLOW_KW_ARGS: retry_params must be a JSON object, got {retry_params!r}")
    retry = _retry_fields(_json(env, "RETRY_PARAMS", "a JSON object", dict[str, Any]), "RETRY_PARAMS")
    retry.update(_retry_fields(retry_params, "CSS_INF_WORKFLOW_KW_ARGS.retry_params"))
    for field, name in (("tries", "CSS_REQUEST_TRIES"), ("delay", "CSS_REQUEST_DELAY"),
                        ("max_delay", "CSS_REQUEST_MAX_DELAY"), ("backoff", "CSS_REQUEST_BACKOFF")):
        type_, minimum = _RETRY_FIELDS[field]
        value = _number(env, name, type_, minimum)
        if value is not None:
            retry[field] = type_(value)
    jitter = _json(env, "CSS_REQUEST_JITTER", "a JSON list [low, high]", Any)
    if jitter is not None:
        retry["jitter"] = _jitter(jitter, "CSS_REQUEST_JITTER")

    timeout = _number(env, "CSS_REQUEST_TIMEOUT", float, 0.001)
    deadline = _number(env, "CSS_JOB_DEADLINE", float, 0.001)
    limits = {
        field: value
        for field, name, type_, minimum in _LIMITS
        if (value := _number(env, name, type_, minimum)) is not None
    }
    return Settings(
        **limits,
        bearer_token=env.get("CSS_BEARER_TOKEN") or None,
        environ=env,
        default_provider=positional[0] if positional else "OPENAI",
        default_endpoint=positional[1] if positional else "completions",
        request_defaults=_request_defaults(kw_args),
        retry=RetryPolicy(**retry),
        request_timeout=60.0 if timeout is None else float(timeout),
        job_deadline=150.0 if deadline is None else float(deadline),
        models=_catalogues(env, "CSS_MODELS"),
        extra_models=_catalogues(env, "CSS_EXTRA_MODELS"),
        fallbacks=_fallbacks(env),
        compatible=_compatible(env),
        **_operations(env),
    )
