"""The plugin host: inline plugin classes registered on a plugin manager (and unregistered
after), served over real sockets, plus discovery of the OpenAI plugin by its entry point.

As in datasette and llm, every hook has a test named `test_hook_<hook>...`, which the last
test of this module checks.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pluggy
import pytest

from css_core.config import Settings, load_settings
from css_core.errors import ConfigError, InvalidJob, ProviderBadResponse, ProviderNotAvailable
from css_core.providers import hookspecs
from css_core.providers import registry as plugins
from css_core.providers.hookspecs import hookimpl
from css_core.providers.registry import PluginInfo, build_registry, plugin_manager
from css_core.testing import ProviderDouble
from css_core.types import CSSRequest, PreparedCall, ProviderCall, ProviderSpec, Result
from tests.conftest import (
    KEY,
    ONCHAIN,
    STREAM,
    assert_error,
    chat,
    job,
    onchain_hex,
    post_job,
    registered,
    service_env,
)
from tests.helpers import requires_plugin

ECHO_KEY = "sk-echo-key"


def spec(name: str, onchain_id: int, **fields: Any) -> ProviderSpec:
    return ProviderSpec(name=name, onchain_id=onchain_id, api_key_env=f"{name}_API_KEY",
                        default_base_url=f"http://{name.lower()}.invalid", **fields)


class Echo:
    """A provider with its own transport (no HTTP): it answers with the last message."""

    def __init__(self) -> None:
        self.calls: list[PreparedCall] = []

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return spec("ECHO", 42, endpoints=("completions", "embeddings"), models=("parrot",))

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        if request.endpoint != "completions":
            return None
        if len(request.messages) > 1:
            raise InvalidJob("ECHO takes exactly one message")
        return ProviderCall("echo", {"text": request.messages[0].content})

    @hookimpl(tryfirst=True)
    def css_call(self, call: PreparedCall) -> Awaitable[bytes]:
        self.calls.append(call)

        async def answer() -> bytes:
            return call.content

        return answer()

    @hookimpl(tryfirst=True)
    def css_call_stream(self, call: PreparedCall) -> AsyncIterator[bytes]:
        self.calls.append(call)

        async def events() -> AsyncIterator[bytes]:
            for word in msgspec.json.decode(call.content)["text"].split():
                yield b""  # a keep-alive: no text
                yield word.encode() + b" "

        return events()

    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        text: str = msgspec.json.decode(body)["text"]
        return "echo: " + text

    @hookimpl
    def css_parse_stream_event(self, data: bytes) -> str | None:
        return data.decode() or None


class Mirror:
    """An OpenAI-compatible provider at the double (as Perplexity is), called by the core's call."""

    def __init__(self, name: str = "MIRROR", onchain_id: int = 43) -> None:
        self.spec = spec(name, onchain_id)

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return self.spec

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        stream = {"stream": True} if request.stream else {}  # the plugin asks its provider to stream
        return ProviderCall("/chat/completions", {"model": request.model, "messages": messages, **stream})

    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        content: str | None = msgspec.json.decode(body)["choices"][0]["message"]["content"]
        return content


class StreamingMirror(Mirror):
    @hookimpl
    def css_parse_stream_event(self, data: bytes) -> str | None:
        content: str | None = msgspec.json.decode(data)["choices"][0]["delta"].get("content")
        return content


class Observer:
    """Owns no provider: its hooks apply to every provider's jobs."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def css_call(self, spec: ProviderSpec) -> None:
        self.seen.append(spec.name)


class OwnCalls:
    """Owns no provider: makes every provider's calls itself, with the client the hooks are given."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url  # where to send instead of the provider (a dead port)
        self.attempts = 0

    @hookimpl
    def css_call(self, call: PreparedCall, client: httpx.AsyncClient) -> Awaitable[bytes]:
        async def send() -> bytes:
            self.attempts += 1
            response = await client.post(self.url or call.url, content=call.content, headers=call.headers)
            return response.content

        return send()

    @hookimpl
    def css_call_stream(self, call: PreparedCall, client: httpx.AsyncClient) -> AsyncIterator[bytes]:
        async def events() -> AsyncIterator[bytes]:
            self.attempts += 1
            async with client.stream("POST", self.url or call.url, content=call.content, headers=call.headers) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield line[6:].encode()

        return events()


class Claims:
    """A plugin that claims a provider, for clashes."""

    def __init__(self, name: str, onchain_id: int) -> None:
        self.spec = spec(name, onchain_id)

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return self.spec


class Broken:
    @hookimpl
    def css_provider(self) -> ProviderSpec:
        raise RuntimeError("cannot describe myself")


class Misspelt:
    @hookimpl
    def css_encode_param(self, request: CSSRequest) -> None:
        return None


def settings(double: ProviderDouble | None = None, **environ: str) -> Settings:
    env = service_env(double, **environ) if double is not None else environ
    return load_settings(environ=env, dotenv=None)


@pytest.fixture
def serve_plugins(
    double: ProviderDouble, serve: Callable[..., str], pm: pluggy.PluginManager
) -> Callable[..., str]:
    """Serve the plugins registered on `pm` now: ECHO's key set, MIRROR and OTHER at the double."""

    def start() -> str:
        env = {"ECHO_API_KEY": ECHO_KEY, "MIRROR_API_KEY": KEY, "MIRROR_BASE_URL": f"{double.url}/mirror",
               "OTHER_API_KEY": KEY, "OTHER_BASE_URL": f"{double.url}/other", **service_env(double)}
        return serve(env, plugins=(pm, {}, []))

    return start


# -- the per-job hooks ------------------------------------------------------------------------------


def test_hook_css_call_override_is_used_for_its_own_provider_only(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    echo = Echo()
    with registered(pm, echo=echo, mirror=Mirror()):
        url = serve_plugins()
        assert post_job(http, url, job(chat("hello", provider="ECHO", model="parrot"))).json() == {
            "output": "echo: hello"}
        assert double.requests == []
        (call,) = echo.calls  # the core built the URL and headers, the plugin the body
        assert call.url == "http://echo.invalid/echo"
        assert call.headers["authorization"] == f"Bearer {ECHO_KEY}"

        response = post_job(http, url, job(onchain_hex("on chain", provider_id=42), source=ONCHAIN))
        assert response.json() == {"output": "echo: on chain"}

        mirrored = post_job(http, url, job(chat("hello", provider="MIRROR")))
        assert mirrored.json() == {"output": double.expected_reply("gpt-4", "hello")}
        assert [r.path for r in double.requests] == ["/mirror/chat/completions"]
        assert len(echo.calls) == 2


def test_hook_css_call_stream_override_is_used_for_its_own_provider_only(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    echo = Echo()
    with registered(pm, echo=echo, mirror=StreamingMirror()):
        url = serve_plugins()
        response = post_job(http, url, job(chat("one two three", provider="ECHO"), destination=STREAM))
        assert response.status_code == 200 and response.text == "one two three "  # keep-alives skipped
        mirrored = post_job(http, url, job(chat(provider="MIRROR"), destination=STREAM))
        assert mirrored.text == double.expected_reply("gpt-4", "hi")
        assert len(echo.calls) == 1 and len(double.requests) == 1


@pytest.mark.parametrize("destination", [1, STREAM], ids=["offchain", "stream"])
def test_hook_css_call_gets_the_workers_pooled_httpx_client(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client,
    destination: int,
) -> None:
    own = OwnCalls()
    with registered(pm, mirror=StreamingMirror(), own=own):
        url = serve_plugins()
        for _ in range(2):
            response = post_job(http, url, job(chat("hello", provider="MIRROR"), destination=destination))
            assert response.status_code == 200, response.text
            text = response.text if destination == STREAM else response.json()["output"]
            assert text == double.expected_reply("gpt-4", "hello")
        assert own.attempts == 2
        assert [r.headers["authorization"] for r in double.requests] == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("destination", [1, STREAM], ids=["offchain", "stream"])
def test_hook_css_call_stream_transport_errors_of_a_plugins_own_call_are_retried(
    pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client, destination: int
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    own = OwnCalls(f"http://127.0.0.1:{port}/v1/chat/completions")
    with registered(pm, mirror=StreamingMirror(), own=own):
        url = serve_plugins()
        response = post_job(http, url, job(chat(provider="MIRROR"), destination=destination))
        assert_error(response, 502, "MIRROR failed after 3 attempt(s)", "connection failed")
        assert own.attempts == 3


def test_hook_css_parse_stream_event_that_raises_breaks_the_stream(
    pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    class Picky(Echo):
        @hookimpl
        def css_parse_stream_event(self, data: bytes) -> str | None:
            if data == b"two ":
                raise ProviderBadResponse("unreadable event")
            return data.decode() or None

    with registered(pm, echo=Picky()):
        url = serve_plugins()
        body = job(chat("one two three", provider="ECHO"), destination=STREAM)
        received: list[bytes] = []
        with pytest.raises(httpx.TransportError), http.stream("POST", f"{url}/service_output", json=body) as response:
            assert response.status_code == 200
            received.extend(response.iter_raw())
        assert b"".join(received) == b"one "


def test_hook_css_parse_stream_event_missing_means_streams_are_refused(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, mirror=Mirror()):
        url = serve_plugins()
        body = job(chat(provider="MIRROR"), destination=STREAM)
        assert_error(post_job(http, url, body), 400, "MIRROR cannot stream", "css_parse_stream_event")
        assert double.requests == []
        assert post_job(http, url, job(chat(provider="MIRROR"))).status_code == 200


def test_hook_css_encode_params_refusals_are_400s(
    pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, echo=Echo()):
        url = serve_plugins()
        two = chat(provider="ECHO") | {"params": {"messages": [{"role": "user", "content": "a"}] * 2}}
        assert_error(post_job(http, url, job(two)), 400, "ECHO takes exactly one message")
        embeddings = {"provider": "ECHO", "endpoint": "embeddings", "model": "parrot", "params": {"input": "x"}}
        assert_error(post_job(http, url, job(embeddings)), 400, "ECHO cannot encode", "embeddings")


def test_hook_css_postprocess_unreadable_is_retried_and_none_fails(
    pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    class Flaky(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.answers: list[Any] = [KeyError("choices"), None, None, None, "recovered"]

        @hookimpl
        def css_postprocess(self, body: bytes) -> Result | None:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            result: Result | None = answer
            return result

    flaky = Flaky()
    with registered(pm, echo=flaky):
        url = serve_plugins()
        assert_error(post_job(http, url, job(chat(provider="ECHO"))), 502, "ECHO", "3 attempt", "no result")
        assert post_job(http, url, job(chat(provider="ECHO"))).json() == {"output": "recovered"}
        assert len(flaky.calls) == 5


def test_hook_css_call_of_a_provider_less_plugin_sees_every_provider(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    observer = Observer()
    with registered(pm, mirror=Mirror(), other=Mirror("OTHER", 44), observer=observer):
        url = serve_plugins()
        for provider in ("MIRROR", "OTHER", "MIRROR"):
            response = post_job(http, url, job(chat(provider, provider=provider)))
            assert response.json() == {"output": double.expected_reply("gpt-4", provider)}
        assert observer.seen == ["MIRROR", "OTHER", "MIRROR"]
        assert [r.path for r in double.requests] == [
            "/mirror/chat/completions", "/other/chat/completions", "/mirror/chat/completions"]


def test_per_job_hooks_are_pluggys_own_calls_restricted_to_the_provider(pm: pluggy.PluginManager) -> None:
    """Each provider's per-job hooks are pluggy `HookCaller`s: they ask implementations in pluggy's order,
    wrappers included, and never another provider's plugin."""
    asked: list[str] = []

    def answering(name: str, answer: str | None, **marks: bool) -> object:
        class Plugin:
            @hookimpl(**marks)
            def css_postprocess(self, body: bytes) -> str | None:
                asked.append(name)
                return answer

        return Plugin()

    class Wrapping:
        @hookimpl(wrapper=True)
        def css_postprocess(self) -> Iterator[None]:
            asked.append("wrapper")
            return (yield)

    plugins_in_order = {
        "echo": Echo(),
        "mirror": Mirror(),  # another provider's plugin: never asked for ECHO's jobs
        "last": answering("last", "from last", trylast=True),
        "plain": answering("plain", None),
        "first": answering("first", None, tryfirst=True),
        "later": answering("later", None),
    }
    with registered(pm, **plugins_in_order):
        echo = build_registry(settings(), pm).by_name("ECHO")
        hook = echo.hooks.postprocess
        assert isinstance(hook, pluggy.HookCaller)
        kwargs: dict[str, Any] = {"spec": None, "request": None, "body": b'{"text": "x"}'}
        assert hook(**kwargs) == "echo: x"
        assert asked == ["first", "later", "plain"]
        asked.clear()
        with registered(pm, wrapping=Wrapping()):
            assert hook(**kwargs) == "echo: x"  # a plugin registered later is seen by the same caller
            assert asked == ["wrapper", "first", "later", "plain"]


# -- describing providers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"), [(("ALPHA", 50), ("alpha", 51)), (("ALPHA", 50), ("BETA", 50))], ids=["name", "onchain-id"]
)
def test_hook_css_provider_clash_names_both_plugins(
    pm: pluggy.PluginManager, first: tuple[str, int], second: tuple[str, int]
) -> None:
    infos = {"a": PluginInfo("a", "css-alpha", "1.0"), "b": PluginInfo("b", "css-beta", "2.0")}
    with registered(pm, a=Claims(*first), b=Claims(*second)), pytest.raises(ConfigError) as raised:
        build_registry(settings(), pm, infos, [])
    message = str(raised.value)
    assert "css-alpha 1.0" in message and "css-beta 2.0" in message


def test_hook_css_provider_clash_of_plugins_registered_in_code(pm: pluggy.PluginManager) -> None:
    with registered(pm, mirror=Mirror(), impostor=Claims("mirror", 99)), pytest.raises(ConfigError) as raised:
        build_registry(settings(), pm, {}, [])
    assert "'mirror'" in str(raised.value) and "'impostor'" in str(raised.value)


def test_hook_css_provider_that_raises_is_reported_and_the_others_serve(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_plugins: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, broken=Broken(), mirror=Mirror()):
        registry = build_registry(settings(), pm, {}, [])
        (error,) = registry.errors
        assert "'broken'" in error and "cannot describe myself" in error
        assert [p.spec.name for p in registry.providers] == ["MIRROR"]
        assert pm.get_plugin("broken") is None  # left out, so none of its hooks run

        url = serve_plugins()
        assert post_job(http, url, job(chat(provider="MIRROR"))).status_code == 200


def test_hook_css_provider_must_return_a_spec_with_a_valid_id(pm: pluggy.PluginManager) -> None:
    class NotASpec:
        @hookimpl
        def css_provider(self) -> dict[str, str]:
            return {"name": "DICT"}

    with registered(pm, dict_plugin=NotASpec()):
        (error,) = build_registry(settings(), pm, {}, []).errors
        assert "'dict_plugin'" in error and "not ProviderSpec" in error
    with registered(pm, big=Claims("BIG", 256)), pytest.raises(ConfigError, match=r"'big'.*0-255"):
        build_registry(settings(), pm, {}, [])


def test_misspelt_hook_stops_start_up(pm: pluggy.PluginManager) -> None:
    with registered(pm, typo=Misspelt()), pytest.raises(ConfigError, match=r"'typo'.*css_encode_param"):
        build_registry(settings(), pm, {}, [])


def test_unregistered_provider_is_gone(pm: pluggy.PluginManager) -> None:
    with registered(pm, echo=Echo()):
        assert build_registry(settings(ECHO_API_KEY="k"), pm, {}, []).by_name("ECHO").served
    with pytest.raises(ProviderNotAvailable, match="'ECHO' is not installed"):
        build_registry(settings(ECHO_API_KEY="k"), pm, {}, []).by_name("ECHO")


# -- discovery ----------------------------------------------------------------------------------------------


@requires_plugin("css_openai")
def test_openai_plugin_is_discovered_through_its_entry_point() -> None:
    css_openai = importlib.import_module("css_openai")
    pm, infos, errors = plugin_manager()
    assert not [error for error in errors if "'openai'" in error]
    assert infos["openai"].distribution == "css-openai"
    assert pm.get_plugin("openai") is css_openai
    provider = build_registry(settings(OPENAI_API_KEY="sk-1"), pm, infos, errors).by_name("OPENAI")
    assert provider.spec is css_openai.SPEC and provider.served
    assert str(provider.plugin).startswith("css-openai ")
    assert provider.base_url == "https://api.openai.com/v1"


GOOD = Mirror("GOOD", 60)  # loaded through an entry point below


def test_plugin_that_fails_to_import_is_reported_and_the_others_load(monkeypatch: pytest.MonkeyPatch) -> None:
    group = hookspecs.PROJECT
    ghost = importlib.metadata.EntryPoint("ghost", "no_such_module_for_css_tests", group)
    good = importlib.metadata.EntryPoint("good", f"{__name__}:GOOD", group)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ghost, good])
    pm, infos, errors = plugin_manager()
    (error,) = errors
    assert "'ghost'" in error and "no_such_module_for_css_tests" in error
    assert list(infos) == ["good"] and pm.get_plugin("good") is GOOD
    assert [p.spec.name for p in build_registry(settings(), pm, infos, errors).providers] == ["GOOD"]


# -- every hook is documented and tested ------------------------------------------------------------------------


def test_plugin_hooks_have_tests() -> None:
    hooks = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("css_"))
    assert hooks == sorted(name for name in hookspecs.__all__ if name.startswith("css_"))
    tested = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
                topic = node.name.removeprefix("test_hook_")
                # the longest hook the name starts with: test_hook_css_call_stream_... tests css_call_stream
                if matches := [hook for hook in hooks if topic == hook or topic.startswith(hook + "_")]:
                    tested.add(max(matches, key=len))
    for hook in hooks:
        assert inspect.getdoc(getattr(hookspecs, hook)), f"hookspec {hook} has no docstring"
    assert set(hooks) - tested == set(), "hooks without a test_hook_<hook>... test"
