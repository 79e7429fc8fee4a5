"""`css-inference-service new-plugin NAME`: write a provider plugin's package, ready to install and test.

The package is a plugin for an OpenAI-style chat API, the shape most providers share: its
`pyproject.toml` (the entry point, hatchling), a module of hooks built on
`css_core.openai_format`, tests that run the real service in front of
`css_core.testing.ProviderDouble`, and a README. Its author then edits what differs at their
provider (the catalogue, the key's header, the error shape). The templates are the string
constants below, filled with `string.Template`, so they ship inside the core's wheel as code.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from css_core import __version__

__all__ = (
    "DEFAULT_ONCHAIN_ID",
    "PluginNames",
    "ScaffoldError",
    "add_arguments",
    "new_plugin",
    "plugin_names",
)

#: A high id that no provider shipped with the service uses (they hold 0 to 5).
DEFAULT_ONCHAIN_ID = 200

# a distribution name may not end in "-", which a trailing "_" would become
_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?")


class ScaffoldError(ValueError):
    """The package cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class PluginNames:
    """Every name the package derives from the provider's NAME."""

    provider: str  # ACME_LABS: what jobs put in "provider"
    distribution: str  # css-acme-labs
    module: str  # css_acme_labs
    entry_point: str  # acme_labs
    key_env: str  # ACME_LABS_API_KEY
    base_url_env: str  # ACME_LABS_BASE_URL


def plugin_names(name: str) -> PluginNames:
    """The names of provider `name`'s package; `ScaffoldError` for a name that cannot make them."""
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"{name!r} cannot name a provider: use letters, digits and underscores, starting with a letter "
            "and not ending with an underscore (e.g. ACME or ACME_LABS)"
        )
    lower = name.lower()
    provider = name.upper()
    return PluginNames(provider, "css-" + lower.replace("_", "-"), f"css_{lower}", lower,
                       f"{provider}_API_KEY", f"{provider}_BASE_URL")


def _onchain_id(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 255:
        raise argparse.ArgumentTypeError(f"an on-chain id is a uint8, 0 to 255; got {value!r}")
    return int(value)


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as https://api.acme.example/v1, got {value!r}")
    return value.rstrip("/")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The command's options (its NAME is the command line's second positional argument)."""
    group.add_argument("--dir", type=Path, metavar="DIR",
                       help="the package's directory, new or empty (default ./css-<name>)")
    group.add_argument("--onchain-id", type=_onchain_id, default=DEFAULT_ONCHAIN_ID, metavar="N",
                       help=f"the provider's id in on-chain requests, 0-255 (default {DEFAULT_ONCHAIN_ID}, "
                       "which no shipped provider uses)")
    group.add_argument("--base-url", type=_base_url, metavar="URL",
                       help="the provider API's default base URL (default https://api.<name>.example/v1)")


def new_plugin(name: str, directory: Path | None = None, *, onchain_id: int = DEFAULT_ONCHAIN_ID,
               base_url: str | None = None) -> list[Path]:
    """Write provider `name`'s plugin package into `directory` (default `./css-<name>`); return
    the files written. `ScaffoldError` when the name is refused or `directory` holds anything:
    nothing is overwritten."""
    names = plugin_names(name)
    directory = Path(names.distribution) if directory is None else directory
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} already exists and is not an empty directory: "
                            "name a new one with --dir, or remove it")
    values = {
        "NAME": names.provider, "dist": names.distribution, "module": names.module,
        "entry_point": names.entry_point, "key_env": names.key_env, "base_url_env": names.base_url_env,
        "base_url": base_url or f"https://api.{names.entry_point.replace('_', '-')}.example/v1",
        "onchain_id": str(onchain_id), "core_version": __version__, "default_id": str(DEFAULT_ONCHAIN_ID),
    }
    files = {
        "pyproject.toml": _PYPROJECT,
        f"{names.module}/__init__.py": _MODULE,
        f"tests/test_{names.entry_point}.py": _TESTS,
        "README.md": _README,
    }
    written = []
    for relative, template in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
        written.append(path)
    return written


_PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "$dist"
version = "0.1.0"
description = "$NAME chat completions for css-inference-service"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["css-inference-service>=$core_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# how the service finds the plugin: any name on the left, the module on the right
[project.entry-points.css_inference_service]
$entry_point = "$module"

[tool.hatch.build.targets.wheel]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_MODULE = '''\
"""$NAME, as its API reference describes it: OpenAI's chat-completions wire format.

- Chat completions: `POST {base}/chat/completions` `{model, messages}`; the text is
  `choices[0].message.content`, or, streamed (`"stream": true`), each server-sent event's
  `choices[0].delta.content`, up to `data: [DONE]`.
- Usage: `usage.prompt_tokens` / `usage.completion_tokens` of the answer; a stream asks for it
  with `stream_options.include_usage` and gets it in a last chunk without choices.
- Errors: `{"error": {"message", "type", "code"}}` with the HTTP status.
- Authentication: `Authorization: Bearer <key>`.

Configuration: `$key_env` holds the key (unset: $NAME is not served); `$base_url_env`
points at another server (default `$base_url`).
"""

from __future__ import annotations

import json

from css_core import CSSRequest, ProviderCall, ProviderHTTPError, ProviderSpec, Result, Usage, hookimpl, openai_format

__all__ = ("SPEC",)

SPEC = ProviderSpec(
    name="$NAME",  # what off-chain jobs put in "provider"
    onchain_id=$onchain_id,  # what contracts put in the request's first uint8: never change it once published
    api_key_env="$key_env",  # several comma-separated keys form a pool
    default_base_url="$base_url",  # $base_url_env overrides it
    endpoints=("completions",),  # add "embeddings" with openai_format.embeddings_call / embeddings_result
    models=(),  # the catalogue /service-resources advertises; jobs for other models are still forwarded
    # the key goes as `authorization: Bearer <key>`; for another header: auth_header="x-api-key", auth_scheme=None
)


@hookimpl
def css_provider() -> ProviderSpec:
    """$NAME, described once at start-up."""
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    """`POST /chat/completions` with `{model, messages}`; a stream adds `"stream": true` and asks
    for its usage (`stream_options`: pass `stream_usage=False` to a server that refuses it).
    `None` for an endpoint $NAME does not serve."""
    if request.endpoint == "completions":
        return openai_format.chat_call(request, stream_usage=True)
    return None


@hookimpl
def css_postprocess(body: bytes) -> Result | None:
    """The completion's text: `choices[0].message.content`."""
    return openai_format.chat_result(body)


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    """One streamed chunk's text: `choices[0].delta.content` (`None` for a role-only or usage chunk)."""
    return openai_format.chat_stream_text(data)


@hookimpl
def css_stream_without_text(spec: ProviderSpec, events: list[bytes]) -> None:
    """A stream that ended without text fails naming its `finish_reason` (`length`, `content_filter`)."""
    openai_format.chat_stream_without_text(spec.name, events)


@hookimpl
def css_usage(data: bytes) -> Usage | None:
    """The tokens an answer, or a stream's usage chunk, reports: `usage.prompt_tokens`, `usage.completion_tokens`."""
    return openai_format.usage(data)


@hookimpl
def css_read_error(status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
    """A non-2xx answer in $NAME's words: `error.message`.

    A 429 whose `error.code` is `insufficient_quota` means the account behind the key is out
    of credit, which waiting does not cure: it is not retried with that key but counts as the
    key refused, so a pool of keys moves on to its next key, and the job's caller gets a 502
    (the service's fault), not a 400. `None` for a body of another shape (a proxy's page),
    which the core quotes as text.
    """
    try:
        error = json.loads(body)["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):  # not JSON, no "error", or an error that is a bare string
        return None
    if not isinstance(message, str):
        return None
    if error.get("code") == "insufficient_quota":
        return ProviderHTTPError(status, message, retry_after, retryable=False, key_refused=True)
    return ProviderHTTPError(status, message, retry_after)
'''

_TESTS = '''\
"""$NAME's plugin in front of a double of its API, over real loopback sockets.

`ProviderDouble` plays an OpenAI-style API (chat completions, streams, OpenAI's error shape)
and refuses calls without `authorization: Bearer <key>`; `serve_service` runs the real
service with this plugin. Adapt the double to $NAME where its API differs (`auth_header=`,
`required_headers=`, `Route`s: see `css_core.testing`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from css_core.testing import Fault, ProviderDouble, serve_service
from eth_abi import decode, encode

import $module

KEY = "sk-test"
MODEL = "test-model"
# two attempts, without waiting between them: a failing job answers at once
RETRIES = {"CSS_REQUEST_TRIES": "2", "CSS_REQUEST_DELAY": "0", "CSS_REQUEST_JITTER": "[0, 0]"}
OFFCHAIN, ONCHAIN, STREAM = 1, 0, 2


def chat(content: str = "hi") -> dict[str, Any]:
    return {"provider": "$NAME", "model": MODEL, "params": {"messages": [{"role": "user", "content": content}]}}


def post(url: str, data: Any, source: int = OFFCHAIN, destination: int = OFFCHAIN) -> httpx.Response:
    body = {"source": source, "destination": destination, "data": data, "requires_proof": False}
    return httpx.post(f"{url}/service_output", json=body, timeout=30)


@pytest.fixture
def double() -> Iterator[ProviderDouble]:
    with ProviderDouble(KEY) as provider:
        yield provider


@pytest.fixture
def env(double: ProviderDouble) -> dict[str, str]:
    return {"$key_env": KEY, "$base_url_env": f"{double.url}/v1", **RETRIES}


@pytest.fixture
def url(env: dict[str, str]) -> Iterator[str]:
    with serve_service(env, plugins=[$module]) as base_url:
        yield base_url


def test_completion(double: ProviderDouble, url: str) -> None:
    response = post(url, chat() | {"extra_args": {"max_tokens": 5}})
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply(MODEL, "hi")}
    (request,) = double.requests
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_the_key_is_sent(double: ProviderDouble, url: str) -> None:
    assert post(url, chat()).status_code == 200
    assert double.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_stream(double: ProviderDouble, url: str) -> None:
    response = post(url, chat(), destination=STREAM)
    assert response.status_code == 200, response.text
    assert response.text == double.expected_reply(MODEL, "hi")
    assert double.requests[-1].json["stream"] is True


def test_onchain(double: ProviderDouble, url: str) -> None:
    data = encode(["uint8", "uint8", "string", "(string,string)[]"], [$onchain_id, 0, MODEL, [("user", "hi")]])
    response = post(url, data.hex(), source=ONCHAIN, destination=ONCHAIN)
    (text,) = decode(["string"], bytes.fromhex(response.json()["raw_output"]))
    assert text == double.expected_reply(MODEL, "hi")


def test_server_error_is_retried_then_answered_502(double: ProviderDouble, url: str) -> None:
    double.script(Fault.status(503), Fault.status(503))
    response = post(url, chat())
    assert response.status_code == 502
    assert "$NAME" in response.json()["description"]
    assert len(double.requests) == 2


def test_rejected_request_is_answered_400(double: ProviderDouble, url: str) -> None:
    error = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "code": None}}
    double.script(Fault.status(400, body=error))
    response = post(url, chat())
    assert response.status_code == 400
    assert "max_tokens is too large" in response.json()["description"]
    assert len(double.requests) == 1


def test_exhausted_quota_refuses_the_key(double: ProviderDouble, url: str) -> None:
    quota = {"error": {"message": "You exceeded your quota", "type": "insufficient_quota",
                       "code": "insufficient_quota"}}
    double.script(Fault.status(429, body=quota))
    response = post(url, chat())
    assert response.status_code == 502
    assert "API key" in response.json()["description"]
    assert len(double.requests) == 1


def test_installed_plugin_is_found(double: ProviderDouble, env: dict[str, str]) -> None:
    """Installed (`pip install .`), the service finds the plugin by its entry point."""
    found = importlib.metadata.entry_points(group="css_inference_service", name="$entry_point")
    assert [entry_point.value for entry_point in found] == ["$module"]
    with serve_service(env) as url:  # the installed plugins, as the service loads them
        assert post(url, chat()).json() == {"output": double.expected_reply(MODEL, "hi")}
'''

_README = """\
# $dist

$NAME's chat completions for css-inference-service, the Infernet container that serves
closed-source LLM providers: a provider plugin. Written by `css-inference-service new-plugin
$NAME` for an OpenAI-style API; edit `$module/__init__.py` where $NAME's API differs.

## Install

Next to the service, in the same environment:

```console
pip install ./$dist
css-inference-service plugins
```

(or `uv pip install`). `plugins` lists `$dist`, provider `$NAME`, and whether its key is
set. Uninstalling the package removes the provider.

## Configure

| variable | meaning | default |
|---|---|---|
| `$key_env` | the API key; several, comma-separated, form a pool used in turn | unset: $NAME is not served |
| `$base_url_env` | the base URL of $NAME's API (a proxy, a compatible server, a test double) | `$base_url` |

Off-chain jobs name the provider `"$NAME"`:

```json
{"provider": "$NAME", "model": "...", "params": {"messages": [{"role": "user", "content": "hi"}]}}
```

On-chain, a contract names it by its id, **$onchain_id**, the request's first `uint8`:
`abi.encode(uint8($onchain_id), uint8(0), model, messages)`.

### The on-chain id

This package was written with on-chain id $onchain_id. Unless given `--onchain-id N`,
`new-plugin` writes $default_id, a high id that no provider shipped with the service uses.
A plugin must have one: the ids 0 to 5 are OPENAI, GOOSEAI, PERPLEXITYAI, ANTHROPIC, GEMINI and AZURE.
Before publishing, choose one that no plugin installed beside this one claims
(`css-inference-service plugins` lists them: two plugins with the same id stop the service's
start-up) and set it in `SPEC` (`$module/__init__.py`) and in `tests/`. Contracts encode it,
so never change it once published.

## Adapt it to $NAME

- `SPEC.models`: the catalogue `/service-resources` advertises.
- `SPEC.auth_header` / `auth_scheme`: how the key is sent (by default
  `authorization: Bearer <key>`); `SPEC.headers`: headers every call needs.
- Embeddings: add `"embeddings"` to `SPEC.endpoints` and answer it with
  `openai_format.embeddings_call` / `embeddings_result`.
- `css_read_error`: the error shape, and which errors are not worth retrying.

The hooks' contracts are in `css_core.providers.hookspecs`.

## Test

```console
pip install -e './$dist[test]'
pytest $dist
```

The tests run the real service (`css_core.testing.serve_service`) in front of
`css_core.testing.ProviderDouble`, a real HTTP server playing an OpenAI-style API, over
loopback sockets: a completion, a stream, an on-chain job, the key's header, a server error
(retried, then answered 502), a rejected request (400), an exhausted quota (the key refused),
and the installed entry point. No network and no real key are needed.
"""
