"""`GET /metrics`, over real sockets against the provider double.

The cross-worker tests start the service by its command line with 2 workers (`launch`);
the others run it in this process (`service`), where each app writes its metrics to a
directory of its own. Every scrape is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from css_core.config import load_settings
from css_core.operations.metrics import outcome_of
from css_core.providers.registry import build_registry
from css_core.testing import Fault, ProviderDouble, ServiceServer
from tests.conftest import (
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    job,
    onchain_hex,
    post_job,
    service_env,
)
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

#: every metric family the service exposes, by the name the parser gives it
FAMILIES = {
    "css_jobs", "css_job_duration_seconds", "css_overhead_seconds", "css_provider_attempts", "css_fallbacks",
    "css_in_flight", "css_stream_first_chunk_seconds", "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_token_usage", "css_budget_used", "css_budget_limit",
}


# -- reading a scrape ----------------------------------------------------------------------------------------


class Scrape:
    """One `GET /metrics`, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, Metric] = {family.name: family for family in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """The samples called `name` whose labels include `labels`."""
        family = name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        found = self.families.get(family)
        if found is None:
            return []
        return [(s.labels, s.value) for s in found.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(value for _, value in self.samples(name, **labels))


def scrape(http: httpx.Client, url: str, **headers: str) -> Scrape:
    response = http.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def one_connection_each(url: str, bodies: list[Any], threads: int = 6) -> list[httpx.Response]:
    """Post each body on a connection of its own, several at a time."""

    def post(body: Any) -> httpx.Response:
        with httpx.Client(timeout=30, trust_env=False) as client:
            return post_job(client, url, body)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(post, bodies))


# -- across the workers ---------------------------------------------------------------------------------------


def wait_for_workers(metrics_dir: Path, count: int = 2, timeout: float = 90.0, url: str | None = None) -> None:
    """Until `count` workers have started: each writes its in-flight file when it starts (a loaded
    machine may take many seconds to start the second worker after the first answers); with
    `url`, until each also listens on its socket, which it does a little after (Linux)."""
    deadline = time.monotonic() + timeout
    while len(worker_files(metrics_dir, "gauge_livesum")) < count:
        assert time.monotonic() < deadline, sorted(metrics_dir.iterdir())
        time.sleep(0.1)
    if url is None or not Path("/proc/net/tcp").exists():
        return
    port = int(url.rsplit(":", 1)[1])
    while listening_sockets(port) < count:
        assert time.monotonic() < deadline, f"{listening_sockets(port)} of {count} workers listen"
        time.sleep(0.1)


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (state 0A in /proc/net/tcp)."""
    address = f"0100007F:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1] == address and row[3] == "0A")


def worker_files(metrics_dir: Path, kind: str) -> dict[str, Path]:
    """Each worker's file of `kind` (counter, histogram, gauge_livesum), by its process id."""
    return {path.stem.rsplit("_", 1)[1].split("-")[0]: path for path in metrics_dir.glob(f"{kind}_*.db")}


def jobs_by_worker(metrics_dir: Path, total: int, timeout: float = 5.0) -> dict[str, float]:
    """How many jobs each worker answered, from its own file, once they add up to `total`: a
    worker counts a job just after its answer is sent, so a client may read it first."""
    from prometheus_client.multiprocess import MultiProcessCollector

    deadline = time.monotonic() + timeout
    while True:
        counts = {}
        for pid, path in worker_files(metrics_dir, "counter").items():
            families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
            counts[pid] = sum(s.value for f in families if f.name == "css_jobs" for s in f.samples)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def test_jobs_add_up_across_two_workers(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    service = launch(service_env(double, CSS_REQUEST_TRIES="1", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)))
    wait_for_workers(metrics_dir, url=service.url)
    double.response_delay = 0.05  # jobs overlap, so both workers take some
    ok = [job(chat(f"job {i}")) for i in range(12)]
    assert {r.status_code for r in one_connection_each(service.url, ok)} == {200}
    other = one_connection_each(service.url, [job(chat("x", model="my-own-finetune"))] * 2)
    assert {r.status_code for r in other} == {200}
    bad = one_connection_each(service.url, [{"source": 1, "destination": 1, "data": {}, "requires_proof": True}] * 3)
    assert {r.status_code for r in bad} == {400}
    double.response_delay = 0.0
    double.script(*[Fault.status(500)] * 4)
    failed = one_connection_each(service.url, [job(chat("fails"))] * 4, threads=1)
    assert {r.status_code for r in failed} == {502}
    total = 12 + 2 + 3 + 4

    # every scrape, whichever worker answers it, shows every worker's jobs
    for _ in range(6):
        with httpx.Client(timeout=15, trust_env=False) as fresh:
            seen = scrape(fresh, service.url)
        assert seen.value("css_jobs_total") == total
        common = {"provider": "OPENAI", "endpoint": "completions", "destination": "offchain"}
        assert seen.value("css_jobs_total", model="gpt-4", status="200", **common) == 12
        assert seen.value("css_jobs_total", model="other", status="200", **common) == 2
        assert seen.value("css_jobs_total", model="gpt-4", status="502", **common) == 4
        assert seen.value("css_jobs_total", provider="none", model="none", status="400") == 3
        assert seen.value("css_job_duration_seconds_count") == total
        assert seen.value("css_overhead_seconds_count") == total
    # and both workers answered some of them
    by_worker = jobs_by_worker(metrics_dir, total)
    assert len(by_worker) == 2 and all(by_worker.values()) and sum(by_worker.values()) == total, by_worker


def test_the_run_directory_is_made_for_the_run_and_removed_after_it(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    service = launch(service_env(double, TMPDIR=str(temporary)), workers=2)
    assert post_job(http, service.url, job(chat())).status_code == 200
    (run_dir,) = temporary.glob("css-metrics-*")
    assert list(run_dir.glob("counter_*.db"))
    output = service.stop()
    assert service.process.returncode == 0 and "Traceback" not in output, output
    assert list(temporary.iterdir()) == []


# -- in one process -----------------------------------------------------------------------------------------


def test_the_exposition_parses_and_has_exactly_the_documented_names(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    for destination in (OFFCHAIN, ONCHAIN, STREAM):
        assert post_job(http, url, job(chat(), destination=destination)).status_code == 200
    assert post_job(http, url, job(onchain_hex(), source=ONCHAIN, destination=ONCHAIN)).status_code == 200
    seen = scrape(http, url)
    assert set(seen.families) <= FAMILIES, set(seen.families) - FAMILIES
    for label in ("offchain", "onchain", "stream"):
        assert seen.value("css_jobs_total", destination=label, status="200", provider="OPENAI") >= 1
    assert seen.value("css_stream_first_chunk_seconds_count", provider="OPENAI") >= 1
    assert seen.value("gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="openai",
                      gen_ai_operation_name="chat", gen_ai_request_model="gpt-4", error_type="") >= 4
    assert seen.samples("css_in_flight", provider="OPENAI") == [({"provider": "OPENAI"}, 0.0)]


def test_nothing_a_job_writes_becomes_a_label_value(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    strange = 'evil"} 1\nfake_metric{a="b'
    before = scrape(http, url)
    assert post_job(http, url, job(chat(model=strange))).status_code == 200
    assert post_job(http, url, job(chat(provider=strange))).status_code == 400
    assert post_job(http, url, job(chat(endpoint=strange))).status_code == 400
    seen = scrape(http, url)
    assert "evil" not in seen.text and "fake_metric" not in seen.text
    labels = [sample.labels for family in seen.families.values() for sample in family.samples]
    registry = build_registry(load_settings(environ=service_env(double), dotenv=None))
    providers = {"none", *(provider.spec.name for provider in registry.providers)}
    models = {"none", "other", *registry.by_name("OPENAI").models}
    endpoints = {"none", "other", *registry.by_name("OPENAI").spec.endpoints}
    assert {label["provider"] for label in labels if "provider" in label} <= providers
    assert {label["model"] for label in labels if "model" in label} <= models
    assert {label["endpoint"] for label in labels if "endpoint" in label} <= endpoints
    delta = seen.value("css_jobs_total", provider="OPENAI", model="other", status="200") - \
        before.value("css_jobs_total", provider="OPENAI", model="other", status="200")
    assert delta == 1


def test_in_flight_counts_a_job_while_it_runs(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    double.response_delay = 1.0
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(post_job, httpx.Client(timeout=15, trust_env=False), url, job(chat()))
        double.wait_for_requests(1)
        assert scrape(http, url).value("css_in_flight", provider="OPENAI") == 1
        assert running.result().status_code == 200
    assert scrape(http, url).value("css_in_flight", provider="OPENAI") == 0


def test_metrics_need_the_bearer_token_when_one_is_set(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN="s3cret")
    assert_error(http.get(f"{url}/metrics"), 401, "Bearer")
    assert_error(http.get(f"{url}/metrics", headers={"authorization": "Bearer wrong"}), 401)
    scrape(http, url, authorization="Bearer s3cret")
    # the probes need none
    assert http.get(f"{url}/health").status_code == 200
    assert http.get(f"{url}/ready").status_code == 200


def test_a_job_the_bearer_guard_refuses_is_counted(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN="s3cret")
    before = scrape(http, url, authorization="Bearer s3cret").value("css_jobs_total", provider="none", status="401")
    assert post_job(http, url, job(chat())).status_code == 401
    after = scrape(http, url, authorization="Bearer s3cret").value("css_jobs_total", provider="none", status="401")
    assert after - before == 1


# -- what only the workflow can report ----------------------------------------------------------------------------


def test_outcomes_are_named_as_documented() -> None:
    from css_core.errors import ProviderBadResponse, ProviderHTTPError, ProviderUnreachable

    assert outcome_of(None) == "ok"
    assert outcome_of(ProviderHTTPError(429, "slow down")) == "http_429"
    assert outcome_of(ProviderHTTPError(404, "no")) == "http_4xx"
    assert outcome_of(ProviderHTTPError(503, "down")) == "http_5xx"
    assert outcome_of(TimeoutError()) == "timeout"
    assert outcome_of(ProviderUnreachable("timed out (ReadTimeout)")) == "timeout"
    assert outcome_of(ProviderUnreachable("connection failed (ClientConnectorError)")) == "unreachable"
    assert outcome_of(ProviderBadResponse("not JSON")) == "bad_response"


def test_each_attempt_is_counted_by_its_outcome(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service(CSS_REQUEST_TRIES="3")
    before = scrape(http, url)
    double.script(Fault.status(503), Fault.malformed_json())
    assert post_job(http, url, job(chat())).status_code == 200
    seen = scrape(http, url)
    for outcome in ("http_5xx", "bad_response", "ok"):
        delta = seen.value("css_provider_attempts_total", provider="OPENAI", outcome=outcome) - \
            before.value("css_provider_attempts_total", provider="OPENAI", outcome=outcome)
        assert delta == 1, outcome


def token_usage(before: Scrape, seen: Scrape, provider: str, model: str) -> tuple[float, float]:
    """The input and output tokens counted between two scrapes, for one provider and model's chats."""
    labels = {"gen_ai_provider_name": provider, "gen_ai_request_model": model, "gen_ai_operation_name": "chat"}
    input_tokens, output_tokens = (
        seen.value("gen_ai_client_token_usage_sum", gen_ai_token_type=kind, **labels)
        - before.value("gen_ai_client_token_usage_sum", gen_ai_token_type=kind, **labels)
        for kind in ("input", "output")
    )
    return input_tokens, output_tokens


def test_token_usage_is_observed(service: Callable[..., str], http: httpx.Client, double: ProviderDouble) -> None:
    url = service()
    before = scrape(http, url)
    assert post_job(http, url, job(chat("one two three"))).status_code == 200
    # the double's words: "Hello from gpt-4: one two three"
    assert token_usage(before, scrape(http, url), "openai", "gpt-4") == (3, 6)


def test_token_usage_of_a_stream_is_asked_for_and_observed(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    before = scrape(http, url)
    double.stream_chunks = 4
    response = post_job(http, url, job(chat("one two three"), destination=STREAM))
    assert response.status_code == 200
    assert response.text == "Hello from gpt-4: one two three"  # the usage chunk adds no text
    (sent,) = double.requests
    assert sent.json["stream_options"] == {"include_usage": True}
    assert token_usage(before, scrape(http, url), "openai", "gpt-4") == (3, 6)


def test_a_fallback_is_counted(service: Callable[..., str], http: httpx.Client, double: ProviderDouble) -> None:
    url = service(CSS_REQUEST_TRIES="1", CSS_FALLBACKS='{"OPENAI/gpt-4": ["OPENAI/gpt-4o"]}')
    before = scrape(http, url).value("css_fallbacks_total", from_provider="OPENAI", to_provider="OPENAI")
    double.script(Fault.status(500))
    assert post_job(http, url, job(chat())).status_code == 200
    after = scrape(http, url).value("css_fallbacks_total", from_provider="OPENAI", to_provider="OPENAI")
    assert after - before == 1


def test_the_overhead_is_a_small_part_of_a_slow_job(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    before = scrape(http, url)
    double.response_delay = 0.5
    assert post_job(http, url, job(chat())).status_code == 200
    seen = scrape(http, url)
    overhead = seen.value("css_overhead_seconds_sum") - before.value("css_overhead_seconds_sum")
    duration = seen.value("css_job_duration_seconds_sum") - before.value("css_job_duration_seconds_sum")
    # the half second the provider took is the job's, not the service's overhead
    assert duration >= 0.5 and 0 <= overhead <= duration - 0.5, (duration, overhead)


def test_a_metrics_write_that_fails_never_fails_a_job_nor_holds_its_slot(
    double: ProviderDouble, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = service_env(double, CSS_REQUEST_TRIES="1", CSS_FALLBACKS='{"OPENAI/gpt-4": ["OPENAI/gpt-4o"]}')
    with ServiceServer(env) as server, httpx.Client(timeout=15, trust_env=False) as http:
        (openai,) = [p for p in server.app.state.service.registry.providers if p.spec.name == "OPENAI"]

        def full_disk(*_: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(MmapedDict, "write_value", full_disk)
        with caplog.at_level(logging.INFO, logger="css_core"):
            assert post_job(http, server.url, job(chat())).status_code == 200  # attempt, usage, finish
            stream = post_job(http, server.url, job(chat("one two"), destination=STREAM))
            assert stream.status_code == 200 and stream.text == "Hello from gpt-4: one two"
            double.script(Fault.status(500))
            fell_back = post_job(http, server.url, job(chat()))
            assert fell_back.status_code == 200 and fell_back.headers["x-css-model"] == "gpt-4o"
        assert openai.in_flight == 0
        monkeypatch.undo()
        assert scrape(http, server.url).value("css_in_flight", provider="OPENAI") == 0
    failed = [r for r in caplog.records if "a metrics write failed" in r.getMessage()]
    assert len(failed) == 1 and "No space left" in failed[0].getMessage(), caplog.text
    finished = [r for r in caplog.records if r.getMessage() == "job finished"]
    assert len(finished) == 3
