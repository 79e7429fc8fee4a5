"""Serve an app factory of bench/variants.py as `css-inference-service` serves the service.

    python bench/serve.py variants:floor_app --bind=127.0.0.1:8000 --workers=2

The same server and flags as the command line (css_core/edge/cli.py): uvicorn (uvloop and
httptools, picked as there), warning log level, no access log, lifespan on, no `server`
header, the service's graceful-shutdown time and uvicorn logging config, and with several
workers the command line's supervisor (css_core/edge/workers.py: a listening socket per
worker). A fresh `PROMETHEUS_MULTIPROC_DIR` is made for the run, as the command line makes
one, for the service's variants; the floor ignores it. Only the server is the service's
here: the app is the factory named.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("app", help="MODULE:FACTORY, e.g. variants:floor_app")
    p.add_argument("--bind", default="127.0.0.1:8000")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    # imported here: uvicorn's spawned workers import this module again, and need none of it
    import uvicorn

    from css_core.config import load_settings
    from css_core.edge import workers as listeners
    from css_core.edge.cli import parse_bind
    from css_core.operations import metrics
    from css_core.operations.logs import logging_config

    sys.path.insert(0, str(BENCH))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
    settings = load_settings()
    host, port = parse_bind(args.bind)
    options = dict(host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                   timeout_graceful_shutdown=settings.shutdown_grace, server_header=False,
                   log_config=logging_config(settings.log_format))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_dir = tempfile.mkdtemp(prefix="css-metrics-")
    os.environ.setdefault(metrics.VARIABLE, run_dir)
    try:
        if args.workers == 1:
            uvicorn.run(args.app, factory=True, **options)  # type: ignore[arg-type]
        else:
            listeners.serve(args.app, workers=args.workers, **options)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
