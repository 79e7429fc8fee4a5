"""Where the budgets' counts are kept: SQLite for one container's workers, Redis for replicas.

- `SQLiteStore`: a file in `CSS_STATE_DIR` in WAL mode, which every worker of the container
  opens; a check and its count are one `BEGIN IMMEDIATE` transaction, so two workers never
  both take the last request of a budget. The counts outlive a restart. Its calls run on one
  thread of the worker's own, never on the event loop.
- `RedisStore` (`CSS_REDIS_URL`): one key per budget and window, which expires after its
  window; a check and its count are one Lua script, atomic on the server, so any number of
  replicas share the counts. Every key holds the hash tag `{css-budgets}`, so that the
  script's keys share one slot on a Redis Cluster.

Either store raises `StoreUnavailable` naming itself (never a password) when it fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

from css_core.errors import ConfigError, StoreUnavailable
from css_core.operations.budgets import Budgets, Slot

if TYPE_CHECKING:
    from css_core.config import Settings
    from css_core.operations.budgets import Store

__all__ = ("RedisStore", "SQLiteStore", "check_store", "open_budgets", "open_store")

T = TypeVar("T")
_GRACE = 60  # seconds a window's count is kept after it ends, for a late scrape
_TIMEOUT = 2.0  # seconds a store may take to answer before the job is refused
_REASON_LENGTH = 200


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_LENGTH else text[:_REASON_LENGTH] + "…"


def open_budgets(settings: Settings) -> Budgets:
    """The budgets of `CSS_BUDGETS`, with the store the settings name (opened on first use)."""
    return Budgets(settings.budgets, open_store(settings) if settings.budgets else None)


def open_store(settings: Settings) -> Store:
    """The store the settings name: Redis when `CSS_REDIS_URL` is set, else SQLite in `CSS_STATE_DIR`."""
    if settings.redis_url:
        return RedisStore(settings.redis_url)
    return SQLiteStore(Path(settings.state_dir) / "budgets.sqlite3")


def check_store(settings: Settings) -> None:
    """At start-up, before the workers: the SQLite store can be created (a `ConfigError` naming
    `CSS_STATE_DIR` if not). Redis is not checked: it may come up after the service."""
    if not settings.budgets or settings.redis_url:
        return
    store = SQLiteStore(Path(settings.state_dir) / "budgets.sqlite3")
    try:
        store.connect().close()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"CSS_STATE_DIR: the budget store cannot be created in {settings.state_dir!r} "
                          f"({_reason(exc)})") from None


# -- SQLite --------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_use (
    budget TEXT NOT NULL,
    unit TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    used INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (budget, unit, window_start)
) WITHOUT ROWID
"""
_SELECT = "SELECT used FROM budget_use WHERE budget = ? AND unit = ? AND window_start = ?"
_ADD = ("INSERT INTO budget_use VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (budget, unit, window_start) DO UPDATE SET used = used + excluded.used")
_REFUND = "UPDATE budget_use SET used = used - 1 WHERE budget = ? AND unit = ? AND window_start = ? AND used > 0"
_PURGE = "DELETE FROM budget_use WHERE expires < ?"


def _row(slot: Slot) -> tuple[str, str, int]:
    return slot.budget.key, slot.budget.unit, slot.window


class SQLiteStore:
    """The counts in one SQLite file, shared by the container's workers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the budget store (SQLite at {path})"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="css-budgets")
        self._connection: sqlite3.Connection | None = None
        self._purged = 0.0

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are begun explicitly), the schema created."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # `timeout`: how long a writer waits for another worker's transaction
        connection = sqlite3.connect(self.path, timeout=_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # with WAL the file stays consistent; a power cut may lose the last counts, a crash does not
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self.connect()
        return self._connection

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except (OSError, sqlite3.Error) as exc:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._reset)
            raise StoreUnavailable(self.description, _reason(exc)) from None

    def _reset(self) -> None:
        """After an error the connection is dropped; the next call opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # the write lock first: the check and the count see the same counts
        try:
            result = work(db)
            now = time.time()
            if now - self._purged > 60:
                db.execute(_PURGE, (int(now),))
                self._purged = now
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _spent(self, db: sqlite3.Connection, slots: Sequence[Slot]) -> list[Slot]:
        spent = []
        for slot in slots:
            row = db.execute(_SELECT, _row(slot)).fetchone()
            if row is not None and row[0] >= slot.budget.limit:
                spent.append(slot)
        return spent

    def _admit(self, requests: Sequence[Slot], tokens: Sequence[Slot]) -> list[Slot]:
        if not requests:  # a check only: no write, no lock
            return self._spent(self._db(), tokens)

        def work(db: sqlite3.Connection) -> list[Slot]:
            spent = self._spent(db, [*requests, *tokens])
            if not spent:
                db.executemany(_ADD, [(*_row(slot), 1, slot.ends + _GRACE) for slot in requests])
            return spent

        return self._transaction(work)

    async def admit(self, requests: Sequence[Slot], tokens: Sequence[Slot]) -> list[Slot]:
        return await self._call(self._admit, requests, tokens)

    async def add(self, slots: Sequence[Slot], amount: int) -> None:
        rows = [(*_row(slot), amount, slot.ends + _GRACE) for slot in slots]
        await self._call(self._transaction, lambda db: db.executemany(_ADD, rows))

    async def refund(self, slots: Sequence[Slot]) -> None:
        rows = [_row(slot) for slot in slots]
        await self._call(self._transaction, lambda db: db.executemany(_REFUND, rows))

    def _used(self, slots: Sequence[Slot]) -> list[int]:
        db = self._db()
        return [row[0] if (row := db.execute(_SELECT, _row(slot)).fetchone()) else 0 for slot in slots]

    async def used(self, slots: Sequence[Slot]) -> list[int]:
        return await self._call(self._used, slots)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._reset)
        self._executor.shutdown(wait=False)


# -- Redis ---------------------------------------------------------------------------------------------------

# KEYS: the request slots, then the token slots. ARGV[1]: how many request slots; then each
# slot's limit; then each request slot's expiry (epoch seconds). Returns the 1-based
# positions of the spent slots; when there is none, counts one request in each request slot.
_ADMIT_SCRIPT = """
local requests = tonumber(ARGV[1])
local spent = {}
for i = 1, #KEYS do
    if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[1 + i]) then
        spent[#spent + 1] = i
    end
end
if #spent == 0 then
    for i = 1, requests do
        redis.call('INCR', KEYS[i])
        redis.call('EXPIREAT', KEYS[i], ARGV[1 + #KEYS + i])
    end
end
return spent
"""
# ARGV[1]: the amount; then each key's expiry
_ADD_SCRIPT = """
for i = 1, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[1])
    redis.call('EXPIREAT', KEYS[i], ARGV[1 + i])
end
"""
_REFUND_SCRIPT = """
for i = 1, #KEYS do
    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
"""


def _key(slot: Slot) -> str:
    # the budget's key is quoted so that its ":" or "{" cannot run into the other parts
    return f"{{css-budgets}}:{quote(slot.budget.key, safe='*/')}:{slot.budget.unit}:{slot.window}"


def _shown(url: str) -> str:
    """The URL without its user and password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")).geturl()


class RedisStore:
    """The counts in Redis, shared by every replica that names the same server and database."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.description = f"the budget store (Redis at {_shown(url)})"
        # one immediate retry (a connection the server dropped), then the job hears of it at once
        self._redis = Redis.from_url(url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT,
                                     retry=Retry(NoBackoff(), 1))
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)
        self._add = self._redis.register_script(_ADD_SCRIPT)
        self._refund = self._redis.register_script(_REFUND_SCRIPT)

    async def _call(self, call: Callable[[], Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(self.description, _reason(exc)) from None

    async def admit(self, requests: Sequence[Slot], tokens: Sequence[Slot]) -> list[Slot]:
        slots = [*requests, *tokens]
        args = [len(requests), *(slot.budget.limit for slot in slots), *(slot.ends + _GRACE for slot in requests)]
        spent = await self._call(lambda: self._admit(keys=[_key(slot) for slot in slots], args=args))
        return [slots[int(position) - 1] for position in spent]

    async def add(self, slots: Sequence[Slot], amount: int) -> None:
        args = [amount, *(slot.ends + _GRACE for slot in slots)]
        await self._call(lambda: self._add(keys=[_key(slot) for slot in slots], args=args))

    async def refund(self, slots: Sequence[Slot]) -> None:
        await self._call(lambda: self._refund(keys=[_key(slot) for slot in slots], args=[]))

    async def used(self, slots: Sequence[Slot]) -> list[int]:
        values = await self._call(lambda: self._redis.mget([_key(slot) for slot in slots]))
        return [int(value) if value is not None else 0 for value in values]

    async def close(self) -> None:
        await self._redis.aclose()
