"""`css-inference-service` with every worker's budgets on a fixed clock: `python -m tests.clock_service
--bind=HOST:PORT --workers=N`, the time (epoch seconds) in `CSS_TEST_BUDGET_CLOCK`, so that a
test's jobs fall in one budget window whenever it runs.

The clock is set when this module is imported: uvicorn starts each worker by `spawn`, which
imports the main module again (as `__mp_main__`), so every worker has it too. Imported for
its name only (without the variable), it changes nothing.
"""

from __future__ import annotations

import os

from css_core.operations.budgets import Budgets

__all__ = ("CLOCK_VARIABLE",)

CLOCK_VARIABLE = "CSS_TEST_BUDGET_CLOCK"

if CLOCK_VARIABLE in os.environ:
    _fixed = float(os.environ[CLOCK_VARIABLE])
    _init = Budgets.__init__

    def _on_fixed_clock(self: Budgets, *args: object, **kwargs: object) -> None:
        _init(self, *args, **{**kwargs, "clock": lambda: _fixed})  # type: ignore[arg-type]

    Budgets.__init__ = _on_fixed_clock  # type: ignore[method-assign]

if __name__ == "__main__":
    from css_core.edge.cli import main

    main()
