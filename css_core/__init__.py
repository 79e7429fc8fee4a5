"""css-inference-service: an Infernet container serving closed-source LLM providers.

What a provider plugin needs is exported here: the `hookimpl` marker, the types its hooks
take and return, the errors it may raise, and helpers (`openai_format`, `error_message`). The
core is in packages by layer, each importing only from those below it:

    edge/         the Litestar app, its routes, the command line and its workers
    jobs/         the contract's messages, decoding, the on-chain codec, the job pipeline
    providers/    hookspecs, the plugin registry, the core's HTTP call, formats, keys
    operations/   each job's record, metrics, logs, budgets and their stores
    config.py, errors.py, types.py   at the bottom: they import nothing above them
    testing/      the kit for plugin authors (provider doubles, the service in-process)

The modules that used to sit directly in `css_core` (`css_core.codec`, `css_core.hookspecs`,
...) are still importable under their old names for this release, with a
`DeprecationWarning` naming the new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

from css_core.config import Settings
from css_core.errors import ConfigError, InvalidJob, ProviderBadResponse, ProviderHTTPError, ProviderUnreachable
from css_core.providers import openai_format
from css_core.providers.default_call import error_message
from css_core.providers.hookspecs import hookimpl
from css_core.types import (
    JOB_FIELDS,
    RETRYABLE_STATUSES,
    CSSRequest,
    Message,
    PreparedCall,
    ProviderCall,
    ProviderSpec,
    Result,
    Usage,
)

__all__ = (
    "JOB_FIELDS",
    "RETRYABLE_STATUSES",
    "CSSRequest",
    "ConfigError",
    "InvalidJob",
    "Message",
    "PreparedCall",
    "ProviderBadResponse",
    "ProviderCall",
    "ProviderHTTPError",
    "ProviderSpec",
    "ProviderUnreachable",
    "Result",
    "Settings",
    "Usage",
    "__version__",
    "error_message",
    "hookimpl",
    "openai_format",
)

# the modules moved into the layers' packages: their old name, and their new home
_MOVED = {
    "app": "css_core.edge.app", "cli": "css_core.edge.cli", "health": "css_core.edge.health",
    "listeners": "css_core.edge.workers", "openapi": "css_core.edge.openapi", "resources": "css_core.edge.resources",
    "service_output": "css_core.edge.service_output",
    "codec": "css_core.jobs.codec", "job": "css_core.jobs.decode", "messages": "css_core.jobs.messages",
    "retry": "css_core.jobs.retry", "routing": "css_core.jobs.fallbacks", "streamed": "css_core.jobs.streams",
    "workflow": "css_core.jobs.pipeline",
    "compatible": "css_core.providers.compatible", "default_call": "css_core.providers.default_call",
    "hookspecs": "css_core.providers.hookspecs", "keys": "css_core.providers.keys",
    "plugins": "css_core.providers.registry", "provider_http": "css_core.providers.http",
    "budget_store": "css_core.operations.budget_store", "budgets": "css_core.operations.budgets",
    "logs": "css_core.operations.logs", "metrics": "css_core.operations.metrics",
    "record": "css_core.operations.record", "request_id": "css_core.operations.request_id",
}


def _moved(name: str) -> ModuleType:
    new = _MOVED[name]
    warnings.warn(f"css_core.{name} moved to {new}; the old name goes in the next release", DeprecationWarning,
                  stacklevel=3)
    return importlib.import_module(new)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import css_core.codec` (an old name) imports the module from its new home."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return _moved(spec.name.rpartition(".")[2])

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new home's module, already executed


sys.meta_path.append(_MovedModules())
