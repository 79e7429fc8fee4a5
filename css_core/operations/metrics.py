"""The container's Prometheus metrics: one view over all its workers (`GET /metrics`).

Each worker writes its series into files of prometheus_client's multiprocess format in one
directory, and `GET /metrics` merges every worker's files there with prometheus_client's
`MultiProcessCollector`. The directory is `PROMETHEUS_MULTIPROC_DIR`, which the command line
sets to a fresh directory for each run (`css_core.edge.cli`); an app created without it (in a
test, or embedded) makes a directory of its own and removes it when it stops.

The series are written here rather than through prometheus_client's metric classes, whose
multiprocess mode is chosen once per process when the library is imported and which take a
lock and a process-id check on every write. A series here is bound once to its place in
its file, so that a job's metrics cost a few writes into memory (`css_core.operations.record`).

Label values are bounded: `provider` is a provider's registered name (or `none`), `model`
one of its catalogue models (or `other`), `endpoint` one of its endpoints (or `other`);
nothing else from a job ever becomes a label value.

Two cases, on purpose: the `css_*` series' `provider` (and `from_provider`, `to_provider`) is
the name as its plugin declares it, upper case by convention (`OPENAI`, `COHERE`); the
`gen_ai_*` series' `gen_ai_provider_name` follows the OpenTelemetry GenAI conventions,
lower case (`openai`, `gcp.gemini`; one the conventions do not list: its name in lower
case), so that their dashboards work unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from css_core.errors import ConfigError, ProviderHTTPError, ProviderUnreachable

__all__ = (
    "CONTENT_TYPE",
    "OUTCOMES",
    "VARIABLE",
    "Histogram",
    "Metrics",
    "Series",
    "gauge_family",
    "multiprocess_dir",
    "outcome_of",
)

logger = logging.getLogger("css_core.operations.metrics")
VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_two_doubles = struct.Struct("dd").pack  # a series' value and timestamp, as prometheus_client's files hold them
CONTENT_TYPE = "text/plain; version=0.0.4"  # the text format generate_latest writes (Litestar adds the charset)
OUTCOMES = ("ok", "http_4xx", "http_429", "http_5xx", "timeout", "unreachable", "bad_response")

# A job takes from a fraction of a second to the node's deadline.
_JOB_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# The service's own share of a job: well under a millisecond when all is well.
_OVERHEAD_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# The OpenTelemetry GenAI conventions' advised boundaries.
_GEN_AI_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_GEN_AI_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


def outcome_of(exc: BaseException | None) -> str:
    """The `outcome` label of one provider attempt that ended with `exc` (None: it succeeded)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ProviderHTTPError):
        status = exc.status
        if status == 429:
            return "http_429"
        if 400 <= status < 500:
            return "http_4xx"
        return "http_5xx" if status >= 500 else "bad_response"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProviderUnreachable):
        # `provider_http.unreachable` names a read or connect timeout so
        return "timeout" if str(exc).startswith("timed out") else "unreachable"
    return "bad_response"  # ProviderBadResponse, and whatever else made the answer unusable


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR` when set; a `ConfigError` naming it when it is not a directory."""
    path = (os.environ if environ is None else environ).get(VARIABLE) or None
    if path is not None and not os.path.isdir(path):
        raise ConfigError(f"{VARIABLE} must name an existing directory, got {path!r}")
    return path


class Series:
    """One value of one series, written to its place in this worker's file at each change."""

    __slots__ = ("_end", "_file", "_start", "value")

    def __init__(self, file: Any, key: str) -> None:
        self._file = file
        self.value = 0.0
        file.write_value(key, 0.0, 0.0)  # the series exists, at 0, from now on
        # Its place in the file never moves (a growing file is mapped again, at the same
        # offsets), so each change is one slice assignment of the value and its timestamp,
        # as `write_value` makes it, without looking the key up again.
        self._start = file._positions[key]
        self._end = self._start + 16

    def add(self, amount: float) -> None:
        self.value = value = self.value + amount
        self._file._m[self._start:self._end] = _two_doubles(value, 0.0)


def _le(bound: float) -> str:
    # the collector reads `le` back as a float, so any exact spelling of it will do
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Histogram:
    """One histogram series: its sum and one count per bucket (the collector accumulates them)."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, file: Any, name: str, labelnames: tuple[str, ...], labelvalues: tuple[str, ...],
                 help_text: str, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        names = [*labelnames, "le"]
        self._buckets = [
            Series(file, mmap_key(name, name + "_bucket", names, [*labelvalues, _le(bound)], help_text))
            for bound in (*bounds, float("inf"))
        ]
        self._sum = Series(file, mmap_key(name, name + "_sum", list(labelnames), list(labelvalues), help_text))

    def observe(self, value: float) -> None:
        self._buckets[bisect_left(self._bounds, value)].add(1.0)  # the first bound >= value
        self._sum.add(value)


class _Family:
    """A metric's series by label values, each made on first use and kept."""

    def __init__(self, file: Any, name: str, help_text: str, labelnames: tuple[str, ...],
                 kind: str, bounds: tuple[float, ...] = ()) -> None:
        self._file, self._name, self._help, self._labelnames = file, name, help_text, labelnames
        self._kind, self._bounds = kind, bounds
        self._series: dict[tuple[str, ...], Any] = {}

    def series(self, *values: str) -> Series:
        """The counter's or gauge's series with these label values."""
        series: Series | None = self._series.get(values)
        if series is None:
            sample = self._name + "_total" if self._kind == "counter" else self._name
            key = mmap_key(self._name, sample, list(self._labelnames), list(values), self._help)
            series = self._series[values] = Series(self._file, key)
        return series

    def histogram(self, *values: str) -> Histogram:
        """The histogram's series with these label values."""
        histogram: Histogram | None = self._series.get(values)
        if histogram is None:
            histogram = Histogram(self._file, self._name, self._labelnames, values, self._help, self._bounds)
            self._series[values] = histogram
        return histogram


# the collector reads a file's type from its name: `counter_*`, `histogram_*`, `gauge_livesum_*`
_KINDS = ("counter", "histogram", "gauge_livesum")


def _forget_dead_workers(directory: str) -> None:
    """Remove the in-flight counts of workers that are gone (a crashed worker leaves its file)."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # alive, another user's


class Metrics:
    """This worker's series, and `GET /metrics` for all the workers writing to the same directory."""

    _opened = 0  # apps opened by this process: each has files of its own

    def __init__(self, directory: str | None = None) -> None:
        directory = directory or multiprocess_dir()
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="css-metrics-")
        _forget_dead_workers(self.directory)
        Metrics._opened += 1
        ident = f"{os.getpid()}-{Metrics._opened}"
        self._paths = {kind: os.path.join(self.directory, f"{kind}_{ident}.db") for kind in _KINDS}
        self._files: dict[str, Any] = {
            kind: MmapedDict(path)  # type: ignore[no-untyped-call]
            for kind, path in self._paths.items()
        }
        counters, histograms, gauges = self._files["counter"], self._files["histogram"], self._files["gauge_livesum"]

        self.jobs = _Family(counters, "css_jobs", "Jobs answered, by the HTTP status of the answer",
                            ("provider", "model", "endpoint", "destination", "status"), "counter")
        self.job_seconds = _Family(histograms, "css_job_duration_seconds", "A job's time, from its request to the "
                                   "end of its answer", ("provider", "endpoint", "destination"), "histogram",
                                   _JOB_SECONDS)
        self.overhead = _Family(histograms, "css_overhead_seconds", "A job's time not spent waiting for a provider "
                                "or between attempts", (), "histogram", _OVERHEAD_SECONDS).histogram()
        self.attempts = _Family(counters, "css_provider_attempts", "Calls to providers, by how each ended",
                                ("provider", "outcome"), "counter")
        self.fallbacks = _Family(counters, "css_fallbacks", "Jobs passed from a provider to a fallback target",
                                 ("from_provider", "to_provider"), "counter")
        self.in_flight = _Family(gauges, "css_in_flight", "Jobs being served now", ("provider",), "gauge")
        self.first_chunk = _Family(histograms, "css_stream_first_chunk_seconds", "A stream's time to its first text",
                                   ("provider",), "histogram", _JOB_SECONDS)
        self.gen_ai_seconds = _Family(
            histograms, "gen_ai_client_operation_duration_seconds", "GenAI operation duration",
            ("gen_ai_provider_name", "gen_ai_request_model", "gen_ai_operation_name", "error_type"), "histogram",
            _GEN_AI_SECONDS,
        )
        self.gen_ai_tokens = _Family(
            histograms, "gen_ai_client_token_usage", "Number of input and output tokens used",
            ("gen_ai_provider_name", "gen_ai_request_model", "gen_ai_operation_name", "gen_ai_token_type"),
            "histogram", _GEN_AI_TOKENS,
        )

    def bind_providers(self, providers: Iterable[str]) -> None:
        """Make each provider's in-flight series at start-up, so that it shows 0 before its first job."""
        for name in providers:
            self.in_flight.series(name)

    def exposition(self, extra: Iterable[Metric] = ()) -> bytes:
        """The text format of every worker's series, and `extra` families (read now by the caller)."""
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        families = list(extra)
        if families:
            registry.register(_Families(families))
        return generate_latest(registry)

    def close(self) -> None:
        """Close this worker's files; its in-flight file goes (a stopped worker has nothing in flight)."""
        for kind, file in self._files.items():
            file.close()
            if kind.startswith("gauge_live"):
                Path(self._paths[kind]).unlink(missing_ok=True)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


class _Families:
    """A collector of families read just before the scrape (the budgets' use, from their store)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def gauge_family(name: str, help_text: str, labelnames: tuple[str, ...],
                 samples: Iterable[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    """A gauge family built at scrape time."""
    family = GaugeMetricFamily(name, help_text, labels=list(labelnames))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family
