"""The command line: `css-inference-service [--bind=HOST:PORT] [--workers=N]`.

It takes exactly the node's `command` string (e.g. `--bind=0.0.0.0:3000 --workers=2`),
checks the configuration and the plugins once before any worker starts, says which
providers are served, then runs the ASGI server. `css-inference-service plugins` lists
the installed provider plugins; `css-inference-service new-plugin NAME` writes a new
provider plugin's package (`css_core.edge.scaffold`).

Every worker writes its metrics to `PROMETHEUS_MULTIPROC_DIR` (`css_core.operations.metrics`): unless
the operator names one, a fresh directory is made for the run before the workers start,
and removed when the service stops. Logging (`CSS_LOG_FORMAT`) is configured here and, by
uvicorn, again in each worker.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from css_core import __version__
from css_core.config import Settings, load_settings
from css_core.edge import scaffold
from css_core.edge import workers as listeners
from css_core.errors import ConfigError
from css_core.operations import metrics
from css_core.operations.budget_store import check_store
from css_core.operations.budgets import check_providers
from css_core.operations.logs import lean_records, logging_config
from css_core.providers.http import ssl_context
from css_core.providers.registry import Provider, Registry, build_registry

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ("main", "parse_bind", "worker_app")

logger = logging.getLogger("css_core")


def parse_bind(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="css-inference-service",
        description="Infernet container serving closed-source LLM providers. Configuration is read from "
        "the environment and .env (see README).",
    )
    parser.add_argument("command", nargs="?", choices=("serve", "plugins", "new-plugin"), default="serve",
                        help="serve (the default), list the installed provider plugins, or write a new "
                        "provider plugin's package (new-plugin NAME)")
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="new-plugin: the provider's name (letters, digits, _), e.g. ACME")
    parser.add_argument("--bind", type=parse_bind, default=("0.0.0.0", 3000), metavar="HOST:PORT",
                        help="address to listen on (default 0.0.0.0:3000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    scaffold.add_arguments(parser.add_argument_group("new-plugin options"))
    return parser


def _new_plugin(args: argparse.Namespace) -> None:
    try:
        files = scaffold.new_plugin(args.name, args.dir, onchain_id=args.onchain_id, base_url=args.base_url)
    except scaffold.ScaffoldError as exc:
        print(f"css-inference-service new-plugin: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    root = files[0].parent
    print(f"wrote {root}/: " + ", ".join(str(path.relative_to(root)) for path in files))
    local = str(root) if root.is_absolute() else f"./{root}"  # pip reads a bare name as a package on the index
    print(f"next: pip install -e '{local}[test]' && pytest {local}  (see {root / 'README.md'})")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.username or parts.password else url


def _report(registry: Registry) -> None:
    for provider in registry.providers:
        spec = provider.spec
        if provider.served:
            onchain = f"on-chain id {spec.onchain_id}" if provider.onchain else "off-chain jobs only"
            logger.info("serving %s (%s: %s) at %s", spec.name, onchain, ", ".join(spec.endpoints),
                        _redact(provider.base_url))
        else:
            logger.warning("not serving %s: %s", spec.name, provider.unavailable_reason())
    if not registry.providers:
        logger.warning("no provider plugin is installed: every job will be refused")


def _keys(provider: Provider) -> str:
    """The KEY column: the variable, and for a pool how many keys it holds and how many are usable now."""
    if not provider.needs_key:
        return "none needed"
    if not provider.served:
        return f"{provider.spec.api_key_env} NOT SET"
    total = provider.pool.total
    pool = f" ({total} keys, {provider.pool.usable()} usable)" if total > 1 else ""
    return f"{provider.spec.api_key_env} set{pool}"


def _print_plugins(registry: Registry) -> None:
    header = ("DISTRIBUTION", "VERSION", "PROVIDER", "ON-CHAIN ID", "ENDPOINTS", "KEY")
    rows = [header] + [
        (p.plugin.distribution, p.plugin.version, p.spec.name, str(p.spec.onchain_id) if p.onchain else "-",
         ",".join(p.spec.endpoints), _keys(p))
        for p in registry.providers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for error in registry.errors:
        print(f"error: {error}")


def _configure_logging(log_format: str) -> None:
    """This process's logging in `log_format`; as with `logging.basicConfig`, a process whose
    logging is set up already (a test calling `main`) keeps it."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(logging_config(log_format))


def worker_app(settings: Settings | None = None, registry: Registry | None = None) -> Litestar:
    """The app of one worker process (uvicorn's factory for each worker), its log records lean."""
    from css_core.edge.app import create_app

    lean_records()
    return create_app(settings, registry)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # writing a package needs neither the configuration nor the plugins: a broken .env must not stop it
    if args.command == "new-plugin":
        if args.name is None:
            _parser().error("new-plugin needs the provider's NAME, e.g. new-plugin ACME")
        _new_plugin(args)
        return
    if args.name is not None:
        _parser().error(f"unexpected argument {args.name!r}: only new-plugin takes a NAME")
    # the environment's log format, until the settings (and .env) say
    log_format = "json" if os.environ.get("CSS_LOG_FORMAT", "").strip().lower() == "json" else "text"
    try:
        settings = load_settings()
        log_format = settings.log_format
        _configure_logging(log_format)
        registry = build_registry(settings)
        ssl_context(settings)  # a bad SSL_CERT_FILE stops start-up here, not in each worker
        check_providers(settings.budgets, {p.spec.name.upper() for p in registry.providers})
        check_store(settings)  # ... and a budget store that cannot be created
        metrics_dir = metrics.multiprocess_dir(settings.environ)
    except ConfigError as exc:
        if log_format == "json":  # the one line a log reader sees
            _configure_logging(log_format)
            logger.critical("configuration error: %s", exc)
        else:
            print(f"css-inference-service: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "plugins":
        _print_plugins(registry)
        return
    if args.workers < 1:
        _parser().error("--workers must be at least 1")
    _report(registry)

    import uvicorn

    host, port = args.bind
    options = dict(host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                   timeout_graceful_shutdown=settings.shutdown_grace, server_header=False,
                   log_config=logging_config(settings.log_format))
    # after a graceful stop uvicorn raises the SIGTERM again: exit 0 then, as the multi-worker supervisor does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_dir = None if metrics_dir else tempfile.mkdtemp(prefix="css-metrics-")
    os.environ[metrics.VARIABLE] = metrics_dir or run_dir or ""  # the workers inherit it
    try:
        if args.workers == 1:
            uvicorn.run(worker_app(settings, registry), **options)
        else:
            listeners.serve("css_core.edge.cli:worker_app", workers=args.workers, **options)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
