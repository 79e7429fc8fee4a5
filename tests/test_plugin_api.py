"""The plugin API, hook by hook, over real sockets: inline plugin classes registered on a plugin
manager (and unregistered after), served by the real app in front of the provider double.

Most plugins here are `Acme` (`tests/acme.py`), an OpenAI-compatible provider built on
`css_core.providers.openai_format` and served at the double, with one hook changed per test. A
plugin's token usage and its reasons for a stream without text: `test_plugin_usage.py`.
Tests named `test_hook_<hook>...` count for the meta-test of `test_plugins.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pluggy
import pytest

from css_core.config import Settings, load_settings
from css_core.errors import ConfigError, ProviderHTTPError
from css_core.providers import openai_format
from css_core.providers.hookspecs import hookimpl
from css_core.providers.registry import PluginInfo, build_registry, plugin_manager
from css_core.testing import Fault, ProviderDouble, Route
from css_core.types import JOB_FIELDS, CSSRequest, PreparedCall, ProviderCall, ProviderSpec, Result
from tests.acme import Acme, acme_env, acme_job, serve_acme
from tests.conftest import KEY, assert_error, chat, job, post_job, registered
from tests.helpers import requires_plugin

__all__ = ("serve_acme",)  # the fixture, imported for pytest to find

TRIES = 3


# the operator's and the plugin's options, and a job's, each overriding the one before
DEFAULT_OPTIONS = {"temperature": 0.5, "top_p": 0.5, "max_tokens": 10}
KW_ARGS = '{"top_p": 0.7, "ACME": {"max_tokens": 20}}'
EXTRA_ARGS = {"max_tokens": 30, "seed": 1}
OPERATOR_OPTIONS = {"temperature": 0.5, "top_p": 0.7, "max_tokens": 20}
JOB_OPTIONS = {"temperature": 0.5, "top_p": 0.7, "max_tokens": 30, "seed": 1}


def settings(**environ: str) -> Settings:
    return load_settings(environ=environ, dotenv=None)


# -- css_encode_options ---------------------------------------------------------------------------------


class Nests(Acme):
    """A provider that takes its options under `config` (as Gemini takes `generationConfig`)."""

    def __init__(self) -> None:
        super().__init__(default_options=DEFAULT_OPTIONS)
        self.options: list[dict[str, Any]] = []

    @hookimpl
    def css_encode_options(self, request: CSSRequest, options: dict[str, Any]) -> dict[str, Any]:
        assert request.provider == "ACME"
        self.options.append(dict(options))
        return {"config": options}


def test_hook_css_encode_options_nests_the_options_in_order_of_precedence(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    nests = Nests()
    with registered(pm, acme=nests):
        url = serve_acme(CSS_INF_WORKFLOW_KW_ARGS=KW_ARGS)
        for extra_args in (EXTRA_ARGS, None):
            body = acme_job("hello") if extra_args is None else acme_job("hello", extra_args=extra_args)
            response = post_job(http, url, body)
            assert response.json() == {"output": double.expected_reply("gpt-4", "hello")}, response.text
    assert nests.options == [JOB_OPTIONS, OPERATOR_OPTIONS]
    with_job_options, with_operator_options = (r.json for r in double.requests)
    assert with_job_options == {"model": "gpt-4", "messages": [{"role": "user", "content": "hello"}],
                                "config": JOB_OPTIONS}  # nothing of them at the top level
    assert with_operator_options["config"] == OPERATOR_OPTIONS
    assert set(with_operator_options) == {"model", "messages", "config"}


def test_hook_css_encode_options_missing_merges_the_options_at_the_top_level(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Acme(default_options=DEFAULT_OPTIONS)):
        url = serve_acme(CSS_INF_WORKFLOW_KW_ARGS=KW_ARGS)
        assert post_job(http, url, acme_job(extra_args=EXTRA_ARGS)).status_code == 200
        assert post_job(http, url, acme_job()).status_code == 200
    with_job_options, with_operator_options = (r.json for r in double.requests)
    messages = [{"role": "user", "content": "hi"}]
    assert with_job_options == {"model": "gpt-4", "messages": messages, **JOB_OPTIONS}
    assert with_operator_options == {"model": "gpt-4", "messages": messages, **OPERATOR_OPTIONS}


# -- css_read_error -------------------------------------------------------------------------------------


class ReadsItsErrors(Acme):
    """A provider whose errors are `{"problem": ..., "kind": ..., "retry_in": ...}`."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[tuple[int, bytes, float | None]] = []

    @hookimpl
    def css_read_error(self, status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
        self.read.append((status, body, retry_after))
        try:
            error = msgspec.json.decode(body)
            problem = error["problem"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return None  # not this provider's shape: the core reads it
        kind = error.get("kind")
        return ProviderHTTPError(status, problem, error.get("retry_in"),
                                 retryable=True if kind == "busy" else None,
                                 key_refused=True if kind == "bad_key" else None)


BAD_KEY = b'{"problem": "quota gone", "kind": "bad_key"}'


def test_hook_css_read_error_key_refused_is_a_502_quoting_the_provider(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    reader = ReadsItsErrors()
    with registered(pm, acme=reader):
        url = serve_acme()
        double.script(Fault.status(400, body=BAD_KEY))
        description = assert_error(post_job(http, url, acme_job()), 502, "ACME refused this service's API key",
                                   "quota gone")
        assert BAD_KEY.decode() not in description  # the provider's words, not its raw body
    assert reader.read == [(400, BAD_KEY, None)]
    assert len(double.requests) == 1  # a refused key is not retried

    double.reset()
    with registered(pm, acme=Acme()):  # without the hook, the core reads a 400 as a rejected request
        url = serve_acme()
        double.script(Fault.status(400, body=BAD_KEY))
        assert_error(post_job(http, url, acme_job()), 400, "ACME rejected the request", "HTTP 400")


def test_hook_css_read_error_retryable_makes_a_status_retried(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    busy = b'{"problem": "teapot busy", "kind": "busy"}'
    final = b'{"problem": "I am a teapot", "kind": "teapot"}'
    reader = ReadsItsErrors()
    with registered(pm, acme=reader):
        url = serve_acme()
        double.script(Fault.status(418, body=busy))
        response = post_job(http, url, acme_job("again"))
        assert response.json() == {"output": double.expected_reply("gpt-4", "again")}, response.text
        assert len(double.requests) == 2  # 418 is not in ACME's retryable statuses: the plugin said so

        double.script(Fault.status(418, body=final))  # the plugin leaves it to the statuses: not retried
        assert_error(post_job(http, url, acme_job()), 400, "ACME rejected the request", "I am a teapot")
        assert len(double.requests) == 3
    assert [status for status, _, _ in reader.read] == [418, 418]


def test_hook_css_read_error_retry_after_from_the_body_is_honoured(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_down = b'{"problem": "slow down", "retry_in": 1.5}'  # no Retry-After header: only the body says it
    with registered(pm, acme=ReadsItsErrors()), caplog.at_level(logging.WARNING, logger="css_core.jobs.pipeline"):
        url = serve_acme()  # CSS_REQUEST_DELAY=0.01: without the hint the retry would be at once
        double.script(Fault.status(503, body=slow_down))
        started = time.monotonic()
        response = post_job(http, url, acme_job())
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert len(double.requests) == 2
    assert elapsed >= 1.4
    assert "ACME attempt 1 failed (HTTP 503: slow down); retrying in 1.5 s" in caplog.text


# -- css_provider(config) --------------------------------------------------------------------------------


class Configured(Acme):
    """Reads its own setting: how many tokens to ask for."""

    @hookimpl
    def css_provider(self, config: Settings) -> ProviderSpec:
        limit = config.integer("ACME_LIMIT", 5)
        return ProviderSpec(name="ACME", onchain_id=70, api_key_env="ACME_API_KEY",
                            default_base_url="http://acme.invalid", default_options={"max_tokens": limit})


def test_hook_css_provider_reads_its_own_setting(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    tmp_path: Path,
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("ACME_LIMIT=9\n", encoding="utf-8")
    with registered(pm, acme=Configured()):
        def limit(loaded: Settings) -> Any:
            return build_registry(loaded, pm, {}, []).by_name("ACME").spec.default_options["max_tokens"]

        assert limit(settings(ACME_LIMIT="12")) == 12
        assert limit(settings()) == 5
        assert limit(load_settings(environ={}, dotenv=dotenv)) == 9  # the plugin's settings come from .env too
        url = serve_acme(ACME_LIMIT="12")
        assert post_job(http, url, acme_job()).status_code == 200
    assert double.requests[0].json["max_tokens"] == 12


@pytest.mark.parametrize("value", ["abc", "0", "2.5"])
def test_hook_css_provider_malformed_setting_stops_start_up_naming_it(pm: pluggy.PluginManager, value: str) -> None:
    with registered(pm, acme=Configured()), pytest.raises(ConfigError, match="ACME_LIMIT") as raised:
        build_registry(settings(ACME_LIMIT=value), pm, {}, [])
    assert "whole number" in str(raised.value)


# -- css_call: each attempt's headers are its own --------------------------------------------------------


class TagsTheFirstCall:
    """Owns no provider: adds a header to the first call it sees, and lets the core make every call."""

    def __init__(self) -> None:
        self.asked = 0

    @hookimpl(tryfirst=True)
    def css_call(self, call: PreparedCall) -> None:
        self.asked += 1
        if self.asked == 1:
            call.headers["x-first-call"] = "yes"


def test_hook_css_call_headers_are_each_calls_own(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    tagger = TagsTheFirstCall()
    with registered(pm, acme=Acme(), tagger=tagger):
        url = serve_acme()
        double.script(Fault.status(503))  # the first job is retried: a second call of the same job
        assert post_job(http, url, acme_job()).status_code == 200
        assert post_job(http, url, acme_job()).status_code == 200
    assert tagger.asked == 3
    assert [r.headers.get("x-first-call") for r in double.requests] == ["yes", None, None]
    assert [r.headers["authorization"] for r in double.requests] == [f"Bearer {KEY}"] * 3


# -- extra_args may not replace what the request builds from the job -------------------------------------


@pytest.mark.parametrize(
    ("extra_args", "field"),
    [({"messages": [{"role": "user", "content": "injected"}]}, "messages"), ({"model": "x"}, "model"),
     ({"stream": True}, "stream"), ({"stream_options": {"include_usage": True}}, "stream_options"),
     ({"temperature": 0, "model": "x"}, "model")],
)
def test_extra_args_may_not_set_fields_built_from_the_job(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    extra_args: dict[str, Any], field: str,
) -> None:
    with registered(pm, acme=Acme()):
        url = serve_acme()
        description = assert_error(post_job(http, url, acme_job(extra_args=extra_args)), 400, "extra_args", field)
    assert description.index(field) < description.index(":")  # it names the field it refuses first
    assert double.requests == []


def test_extra_args_may_not_set_a_field_the_plugin_declares_its_own(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Acme(job_fields=JOB_FIELDS | {"contents"})):
        url = serve_acme()
        assert_error(post_job(http, url, acme_job(extra_args={"contents": []})), 400, "extra_args", "contents")
    assert double.requests == []


def test_extra_args_are_merged_into_the_body(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Acme()):
        url = serve_acme()
        assert post_job(http, url, acme_job(extra_args={"max_tokens": 5})).status_code == 200
    assert double.requests[0].json == {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 5}


# -- the operator's defaults, per provider ---------------------------------------------------------------


@requires_plugin("css_openai")
def test_operator_defaults_apply_to_the_provider_they_name(
    double: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    pm, infos, errors = plugin_manager()  # the installed plugins (OPENAI), and ACME
    pm.register(Acme(), name="acme")
    url = serve(acme_env(double, CSS_INF_WORKFLOW_KW_ARGS='{"temperature": 0.1, "OPENAI": {"max_tokens": 7}}'),
                plugins=(pm, infos, errors))
    assert post_job(http, url, job(chat())).status_code == 200
    assert post_job(http, url, acme_job()).status_code == 200
    openai, acme = double.requests
    assert openai.path == "/v1/chat/completions" and acme.path == "/acme/chat/completions"
    assert (openai.json["temperature"], openai.json["max_tokens"]) == (0.1, 7)
    assert acme.json["temperature"] == 0.1
    assert "max_tokens" not in acme.json


@pytest.mark.parametrize("value", ['{"OPENAI": 3}', '{"OPENAI": [1]}', '{"ACME": "max_tokens=7"}'])
def test_operator_defaults_of_a_provider_must_be_an_object(value: str) -> None:
    with pytest.raises(ConfigError, match="CSS_INF_WORKFLOW_KW_ARGS"):
        settings(CSS_INF_WORKFLOW_KW_ARGS=value)


@pytest.mark.parametrize(
    ("value", "field"),
    [('{"messages": [{"role": "user", "content": "x"}]}', "messages"), ('{"ACME": {"model": "x"}}', "model"),
     ('{"stream": true}', "stream")],
)
def test_operator_defaults_may_not_set_fields_built_from_the_job(
    pm: pluggy.PluginManager, value: str, field: str
) -> None:
    with registered(pm, acme=Acme()), pytest.raises(ConfigError, match="CSS_INF_WORKFLOW_KW_ARGS") as raised:
        build_registry(settings(CSS_INF_WORKFLOW_KW_ARGS=value), pm, {}, [])
    assert field in str(raised.value) and "ACME" in str(raised.value)


def test_operator_defaults_of_another_provider_do_not_apply(pm: pluggy.PluginManager) -> None:
    with registered(pm, acme=Acme()):
        registry = build_registry(settings(CSS_INF_WORKFLOW_KW_ARGS='{"OTHER": {"stream": true}}'), pm, {}, [])
        assert registry.by_name("ACME").options_for("completions") == {}


# -- css_postprocess: a bug in the plugin, or an answer of the wrong shape ----------------------------------


class Buggy(Acme):
    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        return "tokens: " + len(body)  # type: ignore[operator]  # a TypeError, as a real bug raises it


def assert_plugin_bug(
    response: httpx.Response, double: ProviderDouble, caplog: pytest.LogCaptureFixture, plugin: str
) -> None:
    description = assert_error(response, 500, "ACME", plugin, "TypeError")
    assert "css_postprocess" not in description  # the traceback is in the log, not in the answer
    assert len(double.requests) == 1  # a bug is not retried
    (record,) = [r for r in caplog.records if r.name == "css_core.jobs.pipeline" and r.levelno >= logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is TypeError
    assert "ACME" in record.getMessage()
    assert "Traceback" in caplog.text and "in css_postprocess" in caplog.text


def test_hook_css_postprocess_bug_is_a_500_naming_the_plugin_not_retried(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    infos = {"acme": PluginInfo("acme", "css-acme", "1.2.0")}  # as an installed plugin is known
    with registered(pm, acme=Buggy()), caplog.at_level(logging.ERROR, logger="css_core.jobs.pipeline"):
        url = serve_acme(infos=infos, CSS_REQUEST_TRIES=str(TRIES))
        response = post_job(http, url, acme_job())
    assert_plugin_bug(response, double, caplog, "css-acme 1.2.0")


def test_hook_css_postprocess_bug_of_a_plugin_registered_in_code_names_it(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with registered(pm, acme_buggy=Buggy()), caplog.at_level(logging.ERROR, logger="css_core.jobs.pipeline"):
        url = serve_acme(CSS_REQUEST_TRIES=str(TRIES))
        response = post_job(http, url, acme_job())
    assert_plugin_bug(response, double, caplog, "acme_buggy")  # its registered name: all that is known of it


@pytest.mark.parametrize("error", [TypeError, KeyError], ids=["TypeError", "KeyError"])
def test_hook_css_encode_params_bug_is_a_500_naming_the_plugin(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    error: type[Exception],
) -> None:
    """No provider answer is read when the request is encoded: whatever the plugin raises there
    (but `InvalidJob`) is a bug in the plugin, answered as one."""

    class EncodesBadly(Acme):
        @hookimpl
        def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
            raise error("safety_level")  # e.g. `request.extra_args["safety_level"]`

    infos = {"acme": PluginInfo("acme", "css-acme", "1.2.0")}
    with registered(pm, acme=EncodesBadly()):
        url = serve_acme(infos=infos)
        assert_error(post_job(http, url, acme_job()), 500, "ACME", "css-acme 1.2.0", error.__name__)
    assert double.requests == []


class IndexesTheAnswer(Acme):
    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        content: str = msgspec.json.decode(body)["choices"][0]["message"]["content"]  # a KeyError here
        return content


@pytest.mark.parametrize("plugin", [IndexesTheAnswer, Acme], ids=["KeyError", "msgspec-ValidationError"])
def test_hook_css_postprocess_unreadable_answer_is_retried_then_a_502(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture, plugin: type[Acme],
) -> None:
    double.add_route(Route("POST", r"/acme/chat/completions", {"result": "an answer of another shape"}))
    with registered(pm, acme=plugin()), caplog.at_level(logging.WARNING, logger="css_core.jobs.pipeline"):
        url = serve_acme(CSS_REQUEST_TRIES=str(TRIES))
        response = post_job(http, url, acme_job())
    assert_error(response, 502, "ACME failed after 3 attempt(s)", "unreadable answer")
    assert len(double.requests) == TRIES
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # not reported as a plugin bug
    assert caplog.text.count("retrying") == TRIES - 1


# -- the plugin's path and query --------------------------------------------------------------------------


class WithQuery(Acme):
    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        call = openai_format.chat_call(request)
        return ProviderCall(call.path, call.body, query={"alt": "sse", "v": "2"})


def test_hook_css_encode_params_query_reaches_the_provider(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=WithQuery()):
        url = serve_acme()
        assert post_job(http, url, acme_job()).status_code == 200
    (request,) = double.requests
    assert request.url_path == "/acme/chat/completions"
    assert request.query == {"alt": "sse", "v": "2"}


class ModelInPath(Acme):
    """Puts the job's model in its path WITHOUT quoting it (the contract says to quote it)."""

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return ProviderCall(f"models/{request.model}/generate", {"messages": messages})


GENERATED = {"choices": [{"message": {"role": "assistant", "content": "generated"}}]}


@pytest.fixture
def model_in_path(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str]
) -> Iterator[str]:
    double.add_route(Route("POST", r"/models/(?P<model>[^/]+)/generate", GENERATED))
    with registered(pm, acme=ModelInPath()):
        yield serve_acme()


def test_model_in_an_unquoted_path_is_sent_when_harmless(
    double: ProviderDouble, model_in_path: str, http: httpx.Client
) -> None:
    assert post_job(http, model_in_path, acme_job(model="gpt-4")).json() == {"output": "generated"}
    assert [r.path for r in double.requests] == ["/acme/models/gpt-4/generate"]


@pytest.mark.parametrize("model", ["gpt?admin=1", "gpt#frag", "..", "../../admin", "a/../../b", ".", "a\\b", "a b"])
def test_model_that_would_change_an_unquoted_path_is_a_400(
    double: ProviderDouble, model_in_path: str, http: httpx.Client, model: str
) -> None:
    response = post_job(http, model_in_path, acme_job(model=model))
    assert_error(response, 400, "would change the provider's URL")
    assert double.requests == []


@pytest.mark.parametrize("model", ["%2e%2e", "%2E%2E/%2e%2e/admin", ".%2e"])
def test_percent_encoded_dot_segments_in_an_unquoted_path_stay_below_the_base_url(
    double: ProviderDouble, model_in_path: str, http: httpx.Client, model: str
) -> None:
    """`%2e%2e` is `..` to a URL parser (RFC 3986 6.2.2.2): refused, or sent without being resolved."""
    response = post_job(http, model_in_path, acme_job(model=model))
    sent = [r.path for r in double.requests]
    assert all(path.startswith("/acme/models/") for path in sent), (response.text, sent)
