"""The provider double now lives in the testing kit, `css_core.testing`: this re-exports it.

Kept so that `from tests.provider_double import ProviderDouble, Fault` and
``python -m tests.provider_double --port 8100 --key sk-demo`` (scripts/demo) keep working;
new code imports from `css_core.testing` and runs ``python -m css_core.testing``.
"""

from __future__ import annotations

from css_core.testing import Event, Fault, Framing, ProviderDouble, RecordedRequest, Reject, Route, Stream
from css_core.testing.__main__ import main

__all__ = ("Event", "Fault", "Framing", "ProviderDouble", "RecordedRequest", "Reject", "Route", "Stream")


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m tests.provider_double"))
