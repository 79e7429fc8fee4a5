"""Configuration: defaults, every variable, precedence, `.env`, errors naming the variable,
and the command line that reports them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from css_core.config import RetryPolicy, Settings, load_settings, read_dotenv
from css_core.edge.cli import main
from css_core.errors import ConfigError
from css_core.providers.registry import build_registry
from css_core.testing import ProviderDouble
from tests.conftest import (
    SERVICE_VARIABLE_PREFIXES,
    Launched,
    assert_error,
    chat,
    job,
    post_job,
    run_command,
    service_env,
)
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")


def settings(**environ: str) -> Settings:
    return load_settings(environ=environ, dotenv=None)


def test_defaults() -> None:
    loaded = settings()
    assert (loaded.default_provider, loaded.default_endpoint) == ("OPENAI", "completions")
    assert loaded.defaults_for("OPENAI") == {}
    assert loaded.retry == RetryPolicy(tries=3, delay=3.0, max_delay=10.0, backoff=2.0, jitter=(0.5, 1.5))
    assert (loaded.request_timeout, loaded.job_deadline, loaded.stream_deadline) == (60.0, 150.0, 55.0)
    assert loaded.get("OPENAI_API_KEY") is None
    assert (loaded.max_body_bytes, loaded.max_messages, loaded.max_in_flight) == (4 * 1024 * 1024, 1024, 2048)
    assert (loaded.bearer_token, loaded.shutdown_grace) == (None, 30.0)


def test_every_variable_is_read() -> None:
    loaded = settings(
        OPENAI_API_KEY="sk-1",
        CSS_INF_WORKFLOW_POSITIONAL_ARGS='["PERPLEXITYAI", "embeddings"]',
        CSS_INF_WORKFLOW_KW_ARGS='{"temperature": 0.1, "max_tokens": 50}',
        CSS_REQUEST_TRIES="5",
        CSS_REQUEST_DELAY="0.5",
        CSS_REQUEST_MAX_DELAY="4",
        CSS_REQUEST_BACKOFF="3",
        CSS_REQUEST_JITTER="[0, 0.25]",
        CSS_REQUEST_TIMEOUT="12.5",
        CSS_JOB_DEADLINE="40",
        CSS_MAX_BODY_BYTES="1000",
        CSS_MAX_MESSAGES="8",
        CSS_MAX_IN_FLIGHT="2",
        CSS_BEARER_TOKEN="node-token",
        CSS_SHUTDOWN_GRACE="0",
    )
    assert (loaded.default_provider, loaded.default_endpoint) == ("PERPLEXITYAI", "embeddings")
    assert loaded.defaults_for("OPENAI") == {"temperature": 0.1, "max_tokens": 50}
    assert loaded.retry == RetryPolicy(tries=5, delay=0.5, max_delay=4.0, backoff=3.0, jitter=(0.0, 0.25))
    assert (loaded.request_timeout, loaded.job_deadline, loaded.stream_deadline) == (12.5, 40.0, 40.0)
    assert loaded.get("OPENAI_API_KEY") == "sk-1"
    assert (loaded.max_body_bytes, loaded.max_messages, loaded.max_in_flight) == (1000, 8, 2)
    assert (loaded.bearer_token, loaded.shutdown_grace) == ("node-token", 0.0)


def test_empty_variables_count_as_unset() -> None:
    loaded = settings(OPENAI_API_KEY="", CSS_REQUEST_TRIES="", CSS_INF_WORKFLOW_KW_ARGS=" ")
    assert loaded.get("OPENAI_API_KEY") is None
    assert loaded.retry == RetryPolicy() and loaded.defaults_for("OPENAI") == {}


def test_old_retry_params_and_a_single_jitter_number() -> None:
    loaded = settings(RETRY_PARAMS='{"tries": 7, "delay": 1, "max_delay": 2, "backoff": 1.5, "jitter": 0.25}')
    assert loaded.retry == RetryPolicy(tries=7, delay=1.0, max_delay=2.0, backoff=1.5, jitter=(0.25, 0.25))


def test_retry_precedence_field_by_field() -> None:
    loaded = settings(
        RETRY_PARAMS='{"tries": 9, "delay": 9, "max_delay": 9, "backoff": 9, "jitter": [0, 9]}',
        CSS_INF_WORKFLOW_KW_ARGS='{"retry_params": {"tries": 8, "delay": 8, "max_delay": 8}, "top_p": 1}',
        CSS_REQUEST_TRIES="7",
    )
    # tries: CSS_REQUEST_TRIES; delay, max_delay: retry_params; backoff, jitter: RETRY_PARAMS
    assert loaded.retry == RetryPolicy(tries=7, delay=8.0, max_delay=8.0, backoff=9.0, jitter=(0.0, 9.0))
    assert loaded.defaults_for("OPENAI") == {"top_p": 1}  # retry_params is not sent to the provider

    partial = settings(CSS_INF_WORKFLOW_KW_ARGS='{"retry_params": {"backoff": 4}}', CSS_REQUEST_JITTER="[1, 2]")
    assert partial.retry == RetryPolicy(backoff=4.0, jitter=(1.0, 2.0))  # the rest are the defaults


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        "\n"
        "OPENAI_API_KEY=sk-from-dotenv\n"
        "export CSS_REQUEST_TRIES=5\n"
        "CSS_REQUEST_DELAY = 0.25  # inline comment\n"
        "CSS_INF_WORKFLOW_KW_ARGS='{\"max_tokens\": 3}'\n"
        'OPENAI_BASE_URL="http://127.0.0.1:9/v1"\n'
        "not a variable\n",
        encoding="utf-8",
    )
    assert read_dotenv(dotenv) == {
        "OPENAI_API_KEY": "sk-from-dotenv",
        "CSS_REQUEST_TRIES": "5",
        "CSS_REQUEST_DELAY": "0.25",
        "CSS_INF_WORKFLOW_KW_ARGS": '{"max_tokens": 3}',
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    loaded = load_settings(environ={"CSS_REQUEST_TRIES": "2"}, dotenv=dotenv)
    assert loaded.retry.tries == 2 and loaded.retry.delay == 0.25
    assert loaded.get("OPENAI_API_KEY") == "sk-from-dotenv"
    assert loaded.defaults_for("OPENAI") == {"max_tokens": 3}
    assert read_dotenv(tmp_path / "missing.env") == {}


def test_dotenv_is_parsed_as_python_dotenv_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")  # would be substituted if `$` were expanded
    monkeypatch.setenv("B", "from-the-process")  # `environ=` is the environment, not the process's
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        'A="quoted" # comment\n'
        "export B=1\n"
        "S='single # not a comment'\n"
        "C=value # comment\n"
        "D=pa$$word$HOME\n"
        'E="${HOME}/x"\n'
        "F='$HOME'\n"
        'G="two\\nlines"\n'
        "H=kept-from-dotenv\n",
        encoding="utf-8",
    )
    expected = {"A": "quoted", "B": "1", "S": "single # not a comment", "C": "value", "D": "pa$$word$HOME",
                "E": "${HOME}/x", "F": "$HOME", "G": "two\nlines", "H": "kept-from-dotenv"}
    assert read_dotenv(dotenv) == expected
    loaded = load_settings(environ={"A": "from-the-environment"}, dotenv=dotenv)
    assert loaded.get("A") == "from-the-environment"  # the environment wins
    for name in ("B", "C", "S", "D", "E", "F", "G", "H"):
        assert loaded.get(name) == expected[name], name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CSS_REQUEST_TRIES", "abc"),
        ("CSS_REQUEST_TRIES", "0"),
        ("CSS_REQUEST_TRIES", "2.5"),
        ("CSS_REQUEST_DELAY", "soon"),
        ("CSS_REQUEST_DELAY", "-1"),
        ("CSS_REQUEST_MAX_DELAY", "[10]"),
        ("CSS_REQUEST_BACKOFF", "true"),
        ("CSS_REQUEST_JITTER", "[2, 1]"),
        ("CSS_REQUEST_JITTER", "[1]"),
        ("CSS_REQUEST_JITTER", "wide"),
        ("CSS_REQUEST_TIMEOUT", "0"),
        ("CSS_REQUEST_TIMEOUT", "1m"),
        ("CSS_JOB_DEADLINE", "-5"),
        ("CSS_MAX_BODY_BYTES", "4MB"),
        ("CSS_MAX_MESSAGES", "0"),
        ("CSS_MAX_IN_FLIGHT", "1.5"),
        ("CSS_SHUTDOWN_GRACE", "-1"),
        ("RETRY_PARAMS", "[3]"),
        ("RETRY_PARAMS", '{"tries": "3"}'),
        ("RETRY_PARAMS", '{"retries": 3}'),
        ("RETRY_PARAMS", '{"jitter": [1, 0]}'),
        ("CSS_INF_WORKFLOW_KW_ARGS", "[]"),
        ("CSS_INF_WORKFLOW_KW_ARGS", "{not json"),
        ("CSS_INF_WORKFLOW_KW_ARGS", '{"retry_params": 3}'),
        ("CSS_INF_WORKFLOW_KW_ARGS", '{"retry_params": {"tries": 0}}'),
        ("CSS_INF_WORKFLOW_POSITIONAL_ARGS", "OPENAI"),
        ("CSS_INF_WORKFLOW_POSITIONAL_ARGS", '["OPENAI"]'),
        ("CSS_INF_WORKFLOW_POSITIONAL_ARGS", "[0, 1]"),
    ],
)
def test_malformed_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        settings(**{name: value})
    assert "must be" in str(raised.value) or "unknown" in str(raised.value)


@needs_openai
@pytest.mark.parametrize("url", ["ftp://example.com/v1", "localhost:8000/v1", "api.openai.com"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        build_registry(settings(OPENAI_BASE_URL=url))


@needs_openai
def test_base_url_trailing_slash_is_dropped() -> None:
    registry = build_registry(settings(OPENAI_BASE_URL="http://127.0.0.1:9/v1/"))
    assert registry.by_name("OPENAI").base_url == "http://127.0.0.1:9/v1"


# -- the command line ------------------------------------------------------------------------------------


def test_cli_refuses_a_malformed_variable(tmp_path: Path) -> None:
    result = run_command("--bind=127.0.0.1:1", env={"CSS_REQUEST_TRIES": "abc"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "CSS_REQUEST_TRIES" in result.stderr and "whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reads_dotenv_in_its_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CSS_JOB_DEADLINE=never\n", encoding="utf-8")
    result = run_command(env={}, cwd=tmp_path)
    assert result.returncode == 2 and "CSS_JOB_DEADLINE" in result.stderr


@pytest.fixture
def in_process_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """`cli(*args) -> exit code`: `css_core.edge.cli.main` in this process, in an empty directory
    and environment (quicker than a subprocess where the server is not started)."""
    monkeypatch.chdir(tmp_path)
    for name in os.environ:
        if name.startswith(SERVICE_VARIABLE_PREFIXES):
            monkeypatch.delenv(name)

    def run(*args: str, **environ: str) -> int:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        try:
            main(list(args))
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    return run


def test_cli_help(in_process_cli: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    assert in_process_cli("--help") == 0
    usage = capsys.readouterr().out
    assert "--bind" in usage and "--workers" in usage


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bind=nohost"], "HOST:PORT"), (["--bind=127.0.0.1:99999"], "HOST:PORT"), (["--workers=0"], "--workers"),
     (["--threads=4"], "unrecognized arguments")],
)
def test_cli_refuses_bad_arguments(
    in_process_cli: Callable[..., int], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert in_process_cli(*args) == 2
    assert message in capsys.readouterr().err


@needs_openai
def test_cli_lists_plugins(in_process_cli: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    assert in_process_cli("plugins", OPENAI_API_KEY="sk-SECRET-xyz123") == 0
    output = capsys.readouterr()
    openai = next(line for line in output.out.splitlines() if " OPENAI " in line)
    assert "css-openai" in openai and "OPENAI_API_KEY set" in openai
    assert "sk-SECRET-xyz123" not in output.out + output.err


@needs_openai
def test_startup_log_names_providers_and_never_the_key(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    secret = "sk-SECRET-xyz123"  # not the double's key: jobs fail with a 401 and get logged
    service = launch(service_env(double, OPENAI_API_KEY=secret), workers=1)
    assert_error(post_job(http, service.url, job(chat())), 502, "OPENAI", "401")
    log = service.stop()
    assert "serving OPENAI" in log
    assert "not serving OPENAI" not in log
    assert "job finished" in log and "status=502" in log and "error=ProviderFailed" in log
    assert secret not in log
