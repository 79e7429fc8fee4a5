"""The HTTPS provider row: what a job costs when the provider is HTTPS, as every real one is.

The service keeps its TLS connections to the provider open between jobs, so N jobs cost one
handshake; a client that opens a new connection per call (the reference container's
`requests.post`) pays a handshake each time. Both are measured here against
`css_core.testing`'s double serving HTTPS from a throwaway CA (127.0.0.1 only):

- `service, http` / `service, https`: N sequential jobs through the real service (one
  keep-alive client connection), latency p50/p99, and the TLS handshakes the double saw;
- `direct, https, new connection per call` / `direct, https, kept alive`: the same provider
  calls straight from httpx, to show what a handshake adds on this machine.

    python bench/https.py [--jobs 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx

from css_core.testing import ProviderDouble, ServiceServer

KEY = "sk-bench"
JOB = {"source": 1, "destination": 1, "requires_proof": False,
       "data": {"model": "gpt-4", "params": {"messages": [{"role": "user", "content": "hi"}]}}}
CALL = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def _timed(n: int, call: Callable[[], httpx.Response]) -> list[float]:
    for _ in range(20):  # warm-up
        call().raise_for_status()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call().raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _row(name: str, samples: list[float], extra: str = "") -> None:
    cuts = statistics.quantiles(samples, n=100)
    print(f"| {name} | {cuts[49]:.2f} | {cuts[98]:.2f} | {extra} |")


def _direct(double: ProviderDouble, n: int) -> None:
    """The provider calls straight from httpx: a connection kept alive, and one per call."""
    url = f"{double.url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(verify=double.client_context(), trust_env=False) as kept:
        _row("direct, https, kept alive", _timed(n, lambda: kept.post(url, json=CALL, headers=headers)))

    def fresh() -> httpx.Response:
        with httpx.Client(verify=double.client_context(), trust_env=False) as once:
            return once.post(url, json=CALL, headers=headers)

    _row("direct, https, new connection per call", _timed(n, fresh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    n = parser.parse_args().jobs
    print("| row | p50 ms | p99 ms | provider connections / TLS handshakes |")
    print("|---|---|---|---|")
    for tls in (False, True):
        with ProviderDouble(KEY, tls=tls) as double:
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"{double.url}/v1"}
            if double.ca_file:
                env["SSL_CERT_FILE"] = double.ca_file
            with ServiceServer(env) as server, httpx.Client(base_url=server.url, trust_env=False) as client:
                double.reset()
                samples = _timed(n, lambda: client.post("/service_output", json=JOB))
                seen = f"{double.connections} / {double.handshakes}" if tls else f"{double.connections} / -"
                _row(f"service, {'https' if tls else 'http'}, {n + 20} jobs", samples, seen)
            if tls:
                _direct(double, n)

if __name__ == "__main__":
    main()
