"""Which provider plugins this environment has, for tests that need one (or none).

The nox sessions install the core with one plugin, or with none; a test that needs a
plugin skips cleanly where it is missing, and one that needs none skips where any is
installed. So that a wrong install cannot pass as all-skipped, a session states what it
installed: `CSS_TEST_REQUIRE_PLUGINS` (comma-separated modules, e.g. `css_goose`) or
`CSS_TEST_BARE=1`; the tests that need that then run, and fail, instead of skipping.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest

from css_core.providers.hookspecs import PROJECT as ENTRY_POINT_GROUP

__all__ = ("installed_plugin_modules", "requires_no_plugins", "requires_plugin")


def installed_plugin_modules() -> set[str]:
    """The top-level modules of the installed `css_inference_service` entry points."""
    return {ep.value.split(":")[0].split(".")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}


def requires_plugin(module: str) -> pytest.MarkDecorator:
    """Skip unless the plugin whose entry point is `module` is installed (or required)."""
    required = os.environ.get("CSS_TEST_REQUIRE_PLUGINS", "").split(",")
    missing = module not in installed_plugin_modules() and module not in required
    return pytest.mark.skipif(missing, reason=f"the {module} plugin is not installed")


def requires_no_plugins() -> pytest.MarkDecorator:
    """Skip where any provider plugin is installed (unless `CSS_TEST_BARE=1`)."""
    installed = sorted(installed_plugin_modules())
    skip = bool(installed) and os.environ.get("CSS_TEST_BARE") != "1"
    return pytest.mark.skipif(skip, reason=f"provider plugins are installed: {', '.join(installed)}")
