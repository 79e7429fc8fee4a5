"""`python -m css_core.testing`: a provider double on its own, for demos and manual tests."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable

from css_core.testing.double import ProviderDouble

__all__ = ("main",)

_DIALECTS: dict[str, Callable[..., ProviderDouble]] = {
    "openai": ProviderDouble,
    "anthropic": ProviderDouble.anthropic,
    "gemini": ProviderDouble.gemini,
}


def main(argv: list[str] | None = None, prog: str = "python -m css_core.testing") -> int:
    parser = argparse.ArgumentParser(prog, description="Serve a provider double until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--key", default="test-key", help="the API key clients must send")
    parser.add_argument("--api", choices=sorted(_DIALECTS), default="openai", help="the wire format to speak")
    parser.add_argument("--reply", default=None, help="a fixed completion text")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS from a throwaway CA (needs trustme)")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with _DIALECTS[args.api](args.key, host=args.host, port=args.port, tls=args.tls) as double:
        double.reply, double.chunk_delay = args.reply, args.chunk_delay
        print(f"provider double listening on {double.url}", flush=True)
        if double.ca_file:
            print(f"its CA certificate: {double.ca_file} (e.g. SSL_CERT_FILE={double.ca_file})", flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
