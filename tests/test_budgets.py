"""Spending budgets (`CSS_BUDGETS`): their configuration, their stores, and the service enforcing
them across 2 workers (SQLite) and across two instances sharing a real `redis-server`.

The Redis tests start `redis-server` on a free loopback port; where there is no such binary
they are skipped, saying so. Every test's budgets are on a fixed clock (`Budgets.clock`; for
the command line, `tests.clock_service`), half an hour into a window: its jobs never straddle
two windows, and no test waits for one to end.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from css_core.config import Budget, load_settings, parse_budgets
from css_core.config import BudgetLimits as Limits
from css_core.errors import ConfigError, OverBudget, StoreUnavailable
from css_core.operations.budget_store import RedisStore, SQLiteStore, check_store
from css_core.operations.budgets import Budgets, Slot
from css_core.testing import ProviderDouble, ServiceServer
from tests.conftest import (
    STREAM,
    Launched,
    assert_error,
    chat,
    free_port,
    job,
    launcher,
    mid_window,
    post_job,
    run_command,
    service_env,
)
from tests.helpers import requires_plugin
from tests.test_metrics import jobs_by_worker, one_connection_each, scrape, wait_for_workers

needs_openai = requires_plugin("css_openai")
REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary on PATH (apt-get install "
                                                              "redis-server): the Redis store is not tested")
EVERY_JOB = '{"*": {"requests_per_hour": 3}}'


NOW = mid_window()


def fixed(now: float = NOW) -> Callable[[], float]:
    return lambda: now


@pytest.fixture
def launch_on_clock(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """`launch_on_clock(env, workers=2)`: the command line, its budgets on the clock `NOW`."""
    with launcher(tmp_path) as start:
        yield lambda env, workers=2: start(env, workers=workers, clock=NOW)


@pytest.fixture
def service_on_clock(double: ProviderDouble) -> Iterator[Callable[..., str]]:
    """`service_on_clock(**overrides) -> url`: the app in this process, its budgets on the clock `NOW`."""
    servers: list[ServiceServer] = []

    def start(**overrides: str) -> str:
        server = ServiceServer(service_env(double, **overrides))
        servers.append(server)
        server.start()
        server.app.state.service.budgets.clock = fixed()
        return server.url

    yield start
    for server in servers:
        server.stop()


def budgets(text: str) -> tuple[Budget, ...]:
    return load_settings(environ={"CSS_BUDGETS": text}, dotenv=None).budgets


# -- configuration ----------------------------------------------------------------------------------------------


def test_every_unit_and_scope_is_read() -> None:
    read = budgets('{"*": {"requests_per_day": 100, "tokens_per_minute": 5000}, "openai": {"requests_per_minute": 2},'
                   ' "OPENAI/gpt-4": {"tokens_per_hour": 9, "tokens_per_day": 10, "requests_per_hour": 1}}')
    assert {(b.key, b.provider, b.model, b.unit, b.limit) for b in read} == {
        ("*", None, None, "requests_per_day", 100), ("*", None, None, "tokens_per_minute", 5000),
        ("openai", "OPENAI", None, "requests_per_minute", 2),
        ("OPENAI/gpt-4", "OPENAI", "gpt-4", "tokens_per_hour", 9),
        ("OPENAI/gpt-4", "OPENAI", "gpt-4", "tokens_per_day", 10),
        ("OPENAI/gpt-4", "OPENAI", "gpt-4", "requests_per_hour", 1),
    }
    assert load_settings(environ={}, dotenv=None).budgets == ()


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"*": {"requests_per_hour": 0}}', "CSS_BUDGETS must be"),
    ('{"*": {"requests_per_hour": 1.5}}', "CSS_BUDGETS must be"),
    ('{"*": {"requests_per_week": 1}}', "unknown field `requests_per_week`"),
    ('{"*": {}}', "sets no limit"),
    ('{"OPENAI/": {"requests_per_hour": 1}}', '"PROVIDER/model"'),
    ('{"OPEN AI": {"requests_per_hour": 1}}', '"PROVIDER/model"'),
    ('{"openai": {"requests_per_hour": 1}, "OPENAI": {"requests_per_day": 1}}', "twice"),
    ('["*"]', "CSS_BUDGETS must be"),
    ("{not json", "CSS_BUDGETS must be"),
])
def test_a_budget_that_does_not_parse_stops_start_up(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="CSS_BUDGETS") as raised:
        budgets(text)
    assert fragment in str(raised.value)


def test_the_stores_variables() -> None:
    settings = load_settings(environ={"XDG_STATE_HOME": "/var/lib/x"}, dotenv=None)
    assert settings.state_dir == "/var/lib/x/css-inference-service"
    assert load_settings(environ={"CSS_STATE_DIR": "/s"}, dotenv=None).state_dir == "/s"
    with pytest.raises(ConfigError, match="CSS_REDIS_URL") as raised:
        load_settings(environ={"CSS_REDIS_URL": "http://user:hunter2@host"}, dotenv=None)
    assert "hunter2" not in str(raised.value)
    shown = load_settings(environ={"CSS_REDIS_URL": "redis://user:hunter2@host:1/0"}, dotenv=None)
    assert "hunter2" not in repr(shown)
    assert "hunter2" not in RedisStore("redis://user:hunter2@host:1/0").description


def test_a_state_dir_that_cannot_be_made_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = load_settings(environ={"CSS_BUDGETS": EVERY_JOB, "CSS_STATE_DIR": str(blocker / "sub")}, dotenv=None)
    with pytest.raises(ConfigError, match="CSS_STATE_DIR"):
        check_store(settings)


def test_a_budget_naming_a_provider_that_is_not_installed_stops_start_up(tmp_path: Path) -> None:
    result = run_command(env={"CSS_BUDGETS": '{"OPENAl/gpt-4": {"requests_per_hour": 1}}',
                              "CSS_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "CSS_BUDGETS" in result.stderr and "OPENAL" in result.stderr and "not installed" in result.stderr
    assert not (tmp_path / "state").exists()


# -- which budgets cover a job, and the SQLite store's arithmetic ---------------------------------------------------


def test_which_budgets_cover_a_job() -> None:
    scoped = Budgets(parse_budgets({k: v for k, v in _limits().items()}), store=None)
    assert scoped.active is False  # no store: nothing is ever counted
    keys = {b.key for b in scoped.covering("openai", "gpt-4")}
    assert keys == {"*", "OPENAI", "OPENAI/gpt-4"}
    assert {b.key for b in scoped.covering("OPENAI", "gpt-4o")} == {"*", "OPENAI"}
    assert {b.key for b in scoped.covering("GEMINI", "gpt-4")} == {"*"}


def _limits() -> dict[str, Any]:

    return {"*": Limits(requests_per_day=10), "OPENAI": Limits(requests_per_hour=5),
            "OPENAI/gpt-4": Limits(tokens_per_minute=100)}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_the_sqlite_store_counts_checks_refunds_and_keeps_its_counts(tmp_path: Path) -> None:

    configured = parse_budgets({"*": Limits(requests_per_hour=2, tokens_per_hour=10)})

    async def scenario(path: Path) -> list[Any]:
        ledger = Budgets(configured, SQLiteStore(path), clock=fixed())
        seen: list[Any] = []
        counted: set[tuple[str, str]] = set()
        first = await ledger.admit("OPENAI", "gpt-4", counted)
        seen.append(len(first))
        seen.append(await ledger.admit("GEMINI", "x", counted))  # the same job at another target: not twice
        await ledger.admit("OPENAI", "gpt-4", set())
        try:
            await ledger.admit("OPENAI", "gpt-4", set())
        except OverBudget as exc:
            seen.append((exc.status, exc.headers, exc.message))
        await ledger.refund(first)
        await ledger.admit("OPENAI", "gpt-4", set())  # the refunded request is free again
        await ledger.add_tokens("OPENAI", "gpt-4", 12)
        seen.append([(family.name, [s.value for s in family.samples]) for family in await ledger.families()])
        await ledger.close()
        return seen

    path = tmp_path / "budgets.sqlite3"
    count, again, refused, gauges = run(scenario(path))
    assert (count, again) == (1, [])
    status, headers, message = refused
    assert status == 429 and headers["Retry-After"] == "1800"  # the window's end, half an hour away
    assert "'*'" in message and "2 requests per hour" in message
    assert gauges == [("css_budget_used", [2.0, 12.0]), ("css_budget_limit", [2.0, 10.0])]

    async def after_restart() -> None:
        ledger = Budgets(configured, SQLiteStore(path), clock=fixed())
        with pytest.raises(OverBudget, match="tokens per hour"):  # spent by the job before: it crossed the line
            await ledger.admit("OPENAI", "gpt-4", set())
        await ledger.close()

    run(after_restart())


def test_an_unreachable_sqlite_store_refuses_budgeted_jobs_only(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    async def scenario() -> None:
        ledger = Budgets(parse_budgets({"OPENAI": _limits()["OPENAI"]}), SQLiteStore(blocker / "x" / "db"))
        with pytest.raises(StoreUnavailable, match="SQLite"):
            await ledger.admit("OPENAI", "gpt-4", set())
        assert await ledger.admit("GEMINI", "gpt-4", set()) == []  # under no budget: the store is not asked
        await ledger.close()

    run(scenario())


def test_the_windows_follow_the_budgets_clock(tmp_path: Path) -> None:
    clock = [NOW]

    async def scenario() -> list[int]:
        ledger = Budgets(parse_budgets({"*": Limits(requests_per_hour=1)}), SQLiteStore(tmp_path / "db"),
                         clock=lambda: clock[0])
        await ledger.admit("OPENAI", "gpt-4", set())
        with pytest.raises(OverBudget):
            await ledger.admit("OPENAI", "gpt-4", set())
        clock[0] = NOW + 1799  # the last second of the window
        with pytest.raises(OverBudget) as refused:
            await ledger.admit("OPENAI", "gpt-4", set())
        clock[0] = NOW + 1800  # the next window
        await ledger.admit("OPENAI", "gpt-4", set())
        await ledger.close()
        return [int(refused.value.headers["Retry-After"])]

    assert run(scenario()) == [1]


class ThreadedStore:
    """A store that counts on a thread of its own, as SQLite's does, once the test lets it."""

    description = "the test's store"

    def __init__(self) -> None:
        self.count = 0
        self.entered, self.release, self.done = threading.Event(), threading.Event(), threading.Event()

    def _admit(self, requests: Sequence[Slot]) -> list[Slot]:
        self.entered.set()
        self.release.wait(10)
        self.count += len(requests)
        self.done.set()
        return []

    async def admit(self, requests: Sequence[Slot], tokens: Sequence[Slot]) -> list[Slot]:
        return await asyncio.get_running_loop().run_in_executor(None, self._admit, requests)

    async def refund(self, slots: Sequence[Slot]) -> None:
        self.count -= len(slots)

    async def close(self) -> None:
        pass


def test_a_job_cancelled_while_the_store_counts_gets_its_count_back() -> None:
    store = ThreadedStore()
    ledger = Budgets(parse_budgets({"*": Limits(requests_per_hour=5)}), store, clock=fixed())  # type: ignore[arg-type]

    async def scenario() -> None:
        admitting = asyncio.ensure_future(ledger.admit("OPENAI", "gpt-4", set()))
        await asyncio.to_thread(store.entered.wait, 10)
        admitting.cancel()  # the client left, or the deadline passed, while the store counts
        await asyncio.sleep(0)
        store.release.set()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        await asyncio.to_thread(store.done.wait, 10)

    run(scenario())
    assert store.done.is_set() and store.count == 0


# -- the service, across 2 workers (SQLite) ---------------------------------------------------------------------------


def budgeted_env(double: ProviderDouble, tmp_path: Path, text: str = EVERY_JOB, **more: str) -> dict[str, str]:
    metrics_dir = tmp_path / f"metrics-{len(list(tmp_path.glob('metrics-*')))}"
    metrics_dir.mkdir()
    return service_env(double, CSS_BUDGETS=text, CSS_STATE_DIR=str(tmp_path / "state"),
                       PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), **more)


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


@needs_openai
def test_three_requests_an_hour_let_exactly_three_of_six_jobs_through_two_workers(
    double: ProviderDouble, launch_on_clock: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    env = budgeted_env(double, tmp_path)
    service = launch_on_clock(env, workers=2)
    wait_for_workers(Path(env["PROMETHEUS_MULTIPROC_DIR"]), url=service.url)
    double.response_delay = 0.1  # the jobs overlap: both workers take some, at once
    answers = one_connection_each(service.url, [job(chat(f"job {i}")) for i in range(6)])
    assert statuses(answers) == [200, 200, 200, 429, 429, 429]
    assert len(double.requests) == 3  # a refused job never reaches the provider
    for refused in (a for a in answers if a.status_code == 429):
        assert_error(refused, 429, "'*'", "3 requests per hour", "CSS_BUDGETS")
        assert refused.headers["retry-after"] == "1800"
    # the kernel hashes each connection to a worker's socket: both take some of the six,
    # but for one run in 32, when all six land on one (the count is exact either way)
    assert sum(jobs_by_worker(Path(env["PROMETHEUS_MULTIPROC_DIR"]), 6).values()) == 6
    seen = scrape(http, service.url)
    assert seen.value("css_budget_used", budget="*", unit="requests_per_hour") == 3
    assert seen.value("css_budget_limit", budget="*", unit="requests_per_hour") == 3
    assert seen.value("css_jobs_total", status="429", provider="OPENAI") == 3


@needs_openai
def test_a_restart_within_the_window_keeps_its_counts(
    double: ProviderDouble, launch_on_clock: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    service = launch_on_clock(budgeted_env(double, tmp_path), workers=1)
    assert statuses([post_job(http, service.url, job(chat())) for _ in range(2)]) == [200, 200]
    service.stop()
    service = launch_on_clock(budgeted_env(double, tmp_path), workers=1)
    assert statuses([post_job(http, service.url, job(chat())) for _ in range(2)]) == [200, 429]


@needs_openai
def test_jobs_under_no_budget_are_served_and_refused_jobs_count_nothing(
    service_on_clock: Callable[..., str], http: httpx.Client, double: ProviderDouble, tmp_path: Path
) -> None:
    url = service_on_clock(CSS_BUDGETS='{"OPENAI/gpt-4": {"requests_per_hour": 1}}', CSS_STATE_DIR=str(tmp_path))
    # refused before any provider call (the workflow's own checks): gives its request back
    assert post_job(http, url, job(chat(extra_args={"model": "x"}))).status_code == 400
    assert post_job(http, url, job(chat())).status_code == 200
    assert_error(post_job(http, url, job(chat())), 429, "'OPENAI/gpt-4'", "1 requests per hour")
    assert_error(post_job(http, url, job(chat(), destination=STREAM)), 429, "CSS_BUDGETS")
    # another model is under no budget
    assert post_job(http, url, job(chat(model="gpt-4o"))).status_code == 200
    # a job refused before it is decoded counts nothing either
    assert post_job(http, url, {"source": 7}).status_code == 400
    assert scrape(http, url).value("css_budget_used", budget="OPENAI/gpt-4", unit="requests_per_hour") == 1


@needs_openai
def test_no_budget_no_store(service: Callable[..., str], http: httpx.Client, tmp_path: Path) -> None:
    url = service(CSS_STATE_DIR=str(tmp_path / "state"))
    assert post_job(http, url, job(chat())).status_code == 200
    assert not (tmp_path / "state").exists()
    assert "css_budget" not in http.get(f"{url}/metrics").text


@needs_openai
def test_a_token_budget_lets_the_job_that_crosses_it_complete(
    service_on_clock: Callable[..., str], http: httpx.Client, double: ProviderDouble, tmp_path: Path
) -> None:
    url = service_on_clock(CSS_BUDGETS='{"OPENAI": {"tokens_per_hour": 3}}', CSS_STATE_DIR=str(tmp_path))
    assert post_job(http, url, job(chat("one two"))).status_code == 200  # 2 in, 5 out: crosses 3
    assert_error(post_job(http, url, job(chat())), 429, "'OPENAI'", "3 tokens per hour")
    assert len(double.requests) == 1
    assert scrape(http, url).value("css_budget_used", budget="OPENAI", unit="tokens_per_hour") == 7


@needs_openai
def test_a_job_over_budget_falls_back_to_a_target_whose_budget_allows_it(
    service_on_clock: Callable[..., str], http: httpx.Client, double: ProviderDouble, tmp_path: Path
) -> None:
    url = service_on_clock(CSS_BUDGETS='{"OPENAI/gpt-4": {"requests_per_hour": 1}}', CSS_STATE_DIR=str(tmp_path),
                  CSS_FALLBACKS='{"OPENAI/gpt-4": ["OPENAI/gpt-4o"]}')
    first, second = post_job(http, url, job(chat())), post_job(http, url, job(chat()))
    assert (first.status_code, second.status_code) == (200, 200)
    assert [r.json["model"] for r in double.requests] == ["gpt-4", "gpt-4o"]


# -- Redis, shared by two instances ---------------------------------------------------------------------------------


class RedisServer:
    """A real redis-server on a free loopback port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@needs_openai
@needs_redis
def test_two_instances_sharing_redis_let_exactly_three_of_six_jobs_through(
    double: ProviderDouble, launch_on_clock: Callable[..., Launched], redis_server: RedisServer, tmp_path: Path
) -> None:
    env = service_env(double, CSS_BUDGETS=EVERY_JOB, CSS_REDIS_URL=redis_server.url,
                      CSS_STATE_DIR=str(tmp_path / "unused"))
    first, second = launch_on_clock(env, workers=1), launch_on_clock(env, workers=1)
    double.response_delay = 0.1
    bodies = [job(chat(f"job {i}")) for i in range(6)]
    answers = one_connection_each(first.url, bodies[:3]) + one_connection_each(second.url, bodies[3:])
    assert statuses(answers) == [200, 200, 200, 429, 429, 429]
    assert len(double.requests) == 3
    assert not (tmp_path / "unused").exists()  # with Redis, no SQLite store
    with httpx.Client(timeout=15, trust_env=False) as http:
        for instance in (first, second):
            assert scrape(http, instance.url).value("css_budget_used", budget="*", unit="requests_per_hour") == 3


@needs_openai
@needs_redis
def test_redis_stopped_mid_run_refuses_budgeted_jobs_only(
    double: ProviderDouble, launch: Callable[..., Launched], redis_server: RedisServer, http: httpx.Client
) -> None:
    env = service_env(double, CSS_BUDGETS='{"OPENAI/gpt-4": {"requests_per_hour": 100}}',
                      CSS_REDIS_URL=redis_server.url)
    service = launch(env, workers=2)
    assert post_job(http, service.url, job(chat())).status_code == 200
    redis_server.stop()
    for _ in range(3):
        description = assert_error(post_job(http, service.url, job(chat())), 503, "Redis at", "cannot be reached")
        assert redis_server.url.split("//")[1] in description
    assert post_job(http, service.url, job(chat(model="gpt-4o"))).status_code == 200  # under no budget
    metrics = http.get(f"{service.url}/metrics")
    assert metrics.status_code == 200 and "css_budget_used" not in metrics.text
    assert "css_budget_limit" in metrics.text
    # back again: budgeted jobs are served
    redis_server.start()
    assert post_job(http, service.url, job(chat())).status_code == 200
