"""Spending budgets (`CSS_BUDGETS`): how many requests and tokens jobs may use per window.

`CSS_BUDGETS` is a JSON object. A key is `"*"` (every job), `"PROVIDER"` (the jobs a
provider serves) or `"PROVIDER/model"`; its value sets any of `requests_per_minute`,
`requests_per_hour`, `requests_per_day`, `tokens_per_minute`, `tokens_per_hour`,
`tokens_per_day`, each a positive whole number, e.g.
`{"*": {"requests_per_day": 10000}, "OPENAI/gpt-4": {"tokens_per_hour": 200000}}`.
Provider names match in any case; a model name is taken as written.

Windows are fixed and aligned to UTC (a minute, an hour, a day starts on the UTC clock);
the clock is `Budgets.clock` (`time.time`, or a test's).
A job counts one request against each budget that covers it when its first attempt at a
provider is about to be sent (`Budgets.admit`); a job refused before that counts nothing.
Its tokens (the provider's usage, input plus output) are added when the answer arrives.
A job is refused, 429 with `Retry-After`, when a budget covering it has no request left
or its tokens are already spent (so the job that crosses a token budget still completes).

The counts are kept in a store that every worker and replica shares (`css_core.operations.budget_store`):
SQLite in `CSS_STATE_DIR` for the workers of one container, Redis at `CSS_REDIS_URL` for
several replicas. A store that cannot be reached refuses the jobs under a budget (503) and
serves the others. With no budget configured no store is opened, and a job costs nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from css_core.config import Budget
from css_core.errors import ConfigError, OverBudget, StoreUnavailable
from css_core.operations.metrics import gauge_family

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


__all__ = ("VARIABLE", "Budgets", "Slot", "Store", "check_providers", "over_budget")

logger = logging.getLogger("css_core.operations.budgets")
VARIABLE = "CSS_BUDGETS"


class Slot(NamedTuple):
    """One budget in one window, which starts at `window` (epoch seconds, UTC-aligned)."""

    budget: Budget
    window: int

    @classmethod
    def of(cls, budget: Budget, now: float) -> Slot:
        """The budget in the window `now` (epoch seconds) falls in."""
        seconds = budget.seconds
        return cls(budget, int(now // seconds) * seconds)

    @property
    def ends(self) -> int:
        return self.window + self.budget.seconds


def check_providers(budgets: Iterable[Budget], installed: Collection[str]) -> None:
    """Refuse a budget naming a provider that is not installed (`installed`: upper case): a
    misspelt name would leave the spending it was meant to cap without a cap."""
    for budget in budgets:
        if budget.provider is not None and budget.provider not in installed:
            names = ", ".join(sorted(installed)) or "none"
            raise ConfigError(f"{VARIABLE}: {budget.key!r} names provider {budget.provider}, which is not installed "
                              f"(installed: {names})")


# -- errors ---------------------------------------------------------------------------------------------------


def over_budget(spent: Sequence[Slot], now: float) -> OverBudget:
    """429 naming each spent budget; `Retry-After` is when the last of their windows ends."""
    parts = [
        f"budget {slot.budget.key!r} allows {slot.budget.limit} {slot.budget.unit.replace('_', ' ')} and "
        f"this window's are spent; it ends in {math.ceil(slot.ends - now)} s"
        for slot in spent
    ]
    retry_after = max(1, max(math.ceil(slot.ends - now) for slot in spent))
    return OverBudget("over budget (CSS_BUDGETS): " + "; ".join(parts), retry_after)


# -- the store ------------------------------------------------------------------------------------------------


class Store(Protocol):
    """Where the counts are kept, shared by every worker (and replica) that uses it.

    Each method raises `StoreUnavailable` when the store cannot be reached.
    """

    description: str  # e.g. "the budget store (SQLite at /path)", for messages: never a password

    async def admit(self, requests: Sequence[Slot], tokens: Sequence[Slot]) -> list[Slot]:
        """In one atomic step: the slots already spent; when none is, count one request in each of `requests`."""
        ...

    async def add(self, slots: Sequence[Slot], amount: int) -> None:
        """Add `amount` to each slot's count."""
        ...

    async def refund(self, slots: Sequence[Slot]) -> None:
        """Take back one request counted in each slot."""
        ...

    async def used(self, slots: Sequence[Slot]) -> list[int]:
        """Each slot's count."""
        ...

    async def close(self) -> None: ...


# -- the budgets of one worker ----------------------------------------------------------------------------------


class Budgets:
    """The configured budgets, which cover which job, and their store."""

    def __init__(self, budgets: Iterable[Budget], store: Store | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.budgets = tuple(budgets)
        self.store = store if self.budgets else None
        self.clock = clock  # epoch seconds: which window a count falls in
        self._giving_back: set[asyncio.Task[None]] = set()
        # by scope, so that finding a job's budgets never keeps anything a job wrote
        self._everyone = tuple(b for b in self.budgets if b.provider is None)
        self._provider: dict[str, tuple[Budget, ...]] = {}
        self._model: dict[tuple[str, str], tuple[Budget, ...]] = {}
        for budget in self.budgets:
            if budget.provider is not None and budget.model is None:
                self._provider[budget.provider] = (*self._provider.get(budget.provider, ()), budget)
            elif budget.provider is not None and budget.model is not None:
                scope = (budget.provider, budget.model)
                self._model[scope] = (*self._model.get(scope, ()), budget)

    @property
    def active(self) -> bool:
        return self.store is not None

    def covering(self, provider: str, model: str) -> tuple[Budget, ...]:
        """The budgets covering a job for `provider` (any case) and `model`."""
        name = provider.upper()
        return self._everyone + self._provider.get(name, ()) + self._model.get((name, model), ())

    async def admit(self, provider: str, model: str, counted: set[tuple[str, str]]) -> list[Slot]:
        """Check the budgets covering a job for (`provider`, `model`) and count its request.

        Budgets in `counted` (key, unit) already counted this job, at another target: they
        are not counted twice. Returns the slots counted now (and adds them to `counted`);
        raises `OverBudget` (nothing counted) or `StoreUnavailable`.
        """
        store = self.store
        if store is None:
            return []
        covering = self.covering(provider, model)
        if not covering:
            return []
        now = self.clock()
        requests = [Slot.of(b, now) for b in covering if b.requests and (b.key, b.unit) not in counted]
        tokens = [Slot.of(b, now) for b in covering if not b.requests]
        if not requests and not tokens:
            return []
        # The store counts on a thread of its own (SQLite) or on the server (Redis): a job cancelled
        # meanwhile (its client left, its deadline passed) would never learn what was counted for it.
        admitting = asyncio.ensure_future(store.admit(requests, tokens))
        try:
            spent = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            giving_back = asyncio.ensure_future(self._give_back(admitting, requests))
            self._giving_back.add(giving_back)  # a task the loop only holds weakly
            giving_back.add_done_callback(self._giving_back.discard)
            await asyncio.shield(giving_back)  # cancelled again, it still ends on its own
            raise
        if spent:
            raise over_budget(spent, now)
        counted.update((slot.budget.key, slot.budget.unit) for slot in requests)
        return requests

    async def _give_back(self, admitting: asyncio.Future[list[Slot]], requests: Sequence[Slot]) -> None:
        """Once the store has answered an admission whose job was cancelled: refund what it counted."""
        try:
            spent = await admitting
        except Exception:  # the store failed: no count is known to be held for the job
            return
        if not spent:
            await self.refund(requests)

    async def add_tokens(self, provider: str, model: str, tokens: int) -> None:
        """Add a job's tokens to the budgets covering it; a store that fails is logged, not raised
        (the job has its answer)."""
        store = self.store
        if store is None or tokens <= 0:
            return
        now = self.clock()
        slots = [Slot.of(b, now) for b in self.covering(provider, model) if not b.requests]
        if not slots:
            return
        try:
            await store.add(slots, tokens)
        except StoreUnavailable as exc:
            logger.warning("%d tokens of a %s job were not counted: %s", tokens, provider, exc.message)

    async def refund(self, slots: Sequence[Slot]) -> None:
        """Take back the requests a job counted but never sent."""
        if self.store is None or not slots:
            return
        try:
            await self.store.refund(slots)
        except StoreUnavailable as exc:
            logger.warning("a request counted for a job that was never sent stays counted: %s", exc.message)

    async def families(self) -> list[Metric]:
        """`css_budget_used` (this window's count, when the store answers) and `css_budget_limit`."""
        if self.store is None:
            return []
        now = self.clock()
        labels = [(budget.key, budget.unit) for budget in self.budgets]
        families: list[Metric] = [gauge_family("css_budget_limit", "A budget's limit per window (CSS_BUDGETS)",
                                 ("budget", "unit"), zip(labels, (float(b.limit) for b in self.budgets), strict=True))]
        try:
            used = await self.store.used([Slot.of(budget, now) for budget in self.budgets])
        except StoreUnavailable as exc:
            logger.warning("css_budget_used is left out of this scrape: %s", exc.message)
        else:
            families.insert(0, gauge_family("css_budget_used", "What the jobs used of a budget in its current window",
                                            ("budget", "unit"), zip(labels, map(float, used), strict=True)))
        return families

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
