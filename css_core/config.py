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
default 2048), `CSS_BEARER_TOKEN` (when set, `/service_output` and `/service-resources`
require `Authorization: Bearer <token>`) and `CSS_SHUTDOWN_GRACE` (seconds calls in
flight may take to finish after SIGTERM, default 30).

A provider's model catalogue (what `/service-resources` lists and calls supported) is its
plugin's, unless `CSS_MODELS`, a JSON object `{"PROVIDER": ["model", ...]}`, replaces it
for the providers it names; `CSS_EXTRA_MODELS`, of the same shape, then adds models to
it. Provider names match in any case. A job may still name any model: the catalogue is
only what the node advertises.

`CSS_INF_WORKFLOW_KW_ARGS` holds the operator's defaults for every provider request body;
a key that is a provider's name (upper case) with an object value holds defaults for that
provider only, e.g. `{"temperature": 0.2, "ANTHROPIC": {"max_tokens": 512}}`.
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
from typing import Annotated, Any

import dotenv
import msgspec

from css_core import budgets, compatible, routing
from css_core.errors import ConfigError

__all__ = ("RetryPolicy", "Settings", "load_settings", "read_dotenv")

_STREAM_DEADLINE_CAP = 55.0  # the node cuts a stream at 60 s


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
    request_defaults: dict[str, Any] = {}
    provider_defaults: dict[str, dict[str, Any]] = {}  # by upper-case provider name
    retry: RetryPolicy = RetryPolicy()
    request_timeout: float = 60.0
    job_deadline: float = 150.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 1024
    max_in_flight: int = 2048
    bearer_token: str | None = None
    shutdown_grace: float = 30.0
    models: dict[str, tuple[str, ...]] = {}  # by upper-case provider name: replaces its catalogue
    extra_models: dict[str, tuple[str, ...]] = {}  # ... and extends it
    key_disable_seconds: float = 600.0
    fallbacks: dict[str, tuple[routing.Target, ...]] = {}  # by "PROVIDER/model" or "PROVIDER" (upper case)
    compatible: dict[str, compatible.CompatibleProvider] = {}  # by upper-case name
    log_format: str = "text"  # or "json" (CSS_LOG_FORMAT)
    budgets: tuple[budgets.Budget, ...] = ()  # CSS_BUDGETS, one per limit
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

    def defaults_for(self, provider: str) -> dict[str, Any]:
        """The operator's body defaults for `provider`: the shared ones, then its own over them."""
        return {**self.request_defaults, **self.provider_defaults.get(provider.upper(), {})}


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


def _fallbacks(environ: Mapping[str, str]) -> dict[str, tuple[routing.Target, ...]]:
    raw = _json(environ, routing.VARIABLE, routing.EXPECTED, dict[str, list[str]])
    return routing.parse_fallbacks(raw or {})


def _compatible(environ: Mapping[str, str]) -> dict[str, compatible.CompatibleProvider]:
    raw = _json(environ, compatible.VARIABLE, compatible.EXPECTED, dict[str, compatible.CompatibleProvider])
    return compatible.parse_compatible(raw or {})


def _operations(environ: Mapping[str, str]) -> dict[str, Any]:
    """`CSS_LOG_FORMAT`, `CSS_BUDGETS`, `CSS_STATE_DIR` and `CSS_REDIS_URL`."""
    log_format = (environ.get("CSS_LOG_FORMAT") or "text").strip().lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f"CSS_LOG_FORMAT must be text or json, got {environ['CSS_LOG_FORMAT']!r}")
    raw = _json(environ, budgets.VARIABLE, budgets.EXPECTED, dict[str, budgets.Limits])
    redis_url = environ.get("CSS_REDIS_URL") or None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        scheme = redis_url.partition("://")[0] if "://" in redis_url else "none"  # the URL may hold a password
        raise ConfigError(f"CSS_REDIS_URL must be a redis://, rediss:// or unix:// URL, got one with scheme {scheme!r}")
    # the XDG base directory rule: an unset or relative XDG_STATE_HOME means ~/.local/state
    state_home = environ.get("XDG_STATE_HOME") or ""
    state_home = state_home if os.path.isabs(state_home) else os.path.expanduser("~/.local/state")
    return {
        "log_format": log_format,
        "budgets": budgets.parse_budgets(raw or {}),
        "state_dir": environ.get("CSS_STATE_DIR") or os.path.join(state_home, "css-inference-service"),
        "redis_url": redis_url,
    }


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
    scoped = {name: kw_args.pop(name) for name in list(kw_args) if _PROVIDER_NAME.fullmatch(name)}
    for name, value in scoped.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"CSS_INF_WORKFLOW_KW_ARGS: {name} (a provider's name) must hold a JSON object of that "
                f"provider's defaults, got {value!r}"
            )
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
        request_defaults=kw_args,
        provider_defaults=scoped,
        retry=RetryPolicy(**retry),
        request_timeout=60.0 if timeout is None else float(timeout),
        job_deadline=150.0 if deadline is None else float(deadline),
        models=_catalogues(env, "CSS_MODELS"),
        extra_models=_catalogues(env, "CSS_EXTRA_MODELS"),
        fallbacks=_fallbacks(env),
        compatible=_compatible(env),
        **_operations(env),
    )
