"""The embedded SQLite profile store: the zero-setup default.

Why it looks the way it does:

* One connection owned by one dedicated thread: SQLite connections are not
  meant to be shared across threads, and a single writer never fights itself
  for the database lock; the asyncio side just awaits that thread.
* WAL journal: readers (the query CLI, another process) do not block the
  worker's writes.  ``synchronous=FULL`` by default because ``write_batch``
  promises durability before the worker commits Kafka offsets.
* 16 KiB pages for a new file, and a page cache of ``cache_mb`` (64 MiB):
  a person's row is a ~3 KiB sequence blob in a ``WITHOUT ROWID`` table,
  which on 4 KiB pages spills into overflow pages (an index b-tree keeps at
  most ~1 KiB of a row on its page), and SQLite's default 2 MiB cache sends
  most upserts of a batch of random people back to the file.  ``python -m
  bench.store_write`` (batches of 1 500 random people of 5 000): 190-208 us of
  CPU per person with SQLite's defaults, 132-146 with these, and a 30 %
  smaller file.  A file made with other pages keeps them (SQLite changes them
  only on an empty file): nothing to migrate.
* One transaction per ``write_batch`` with ``executemany``: all-or-nothing,
  and thousands of rows cost one commit.
* Last-write-wins in SQL (``ON CONFLICT ... DO UPDATE ... WHERE
  excluded.write_ts >= table.write_ts``) and tombstone tables checked by every
  upsert, so the semantics match Cassandra's ``USING TIMESTAMP`` without a
  read-modify-write round trip in Python.  As in Cassandra a delete at ``T``
  shadows writes with ``write_ts <= T``; ``write_ts`` is content-derived
  (``schemas.sequence``: newest event ms * 2**20 + window weights) and an
  erasure at ``erased_ms`` deletes at ``erasure_write_ts(erased_ms)``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from operator import attrgetter
from typing import Any, TypeVar

import numpy as np
import orjson

from schemas.sequence import ErasureMarker, IdentityLinkRecord, PersonState, Profile, erasure_write_ts
from streams.stores.base import ForgetReceipt, StoreBatch, StoreError, StoreUnavailable
from streams.stores.codec import (
    INIT_HINT,
    pack_events,
    pack_interests,
    top_k,
    unpack_events,
    unpack_interests,
    vector_bytes,
    vector_from_bytes,
)
from streams.stores.sqlite_schema import check_schema, init_schema, transaction

T = TypeVar("T")
_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit
PAGE_SIZE = 16_384  # of a new file (see the module docstring)
DEFAULT_CACHE_MB = 64

_COUNTS = attrgetter("event_count", "first_ts_ms", "last_ts_ms")

_SEQ_COLS = "person_id, events, event_count, first_ts_ms, last_ts_ms, platforms, write_ts"
_PROFILE_COLS = (
    "person_id, model_version, vector, event_count, first_ts_ms, last_ts_ms, platforms, write_ts, updated_ms, "
    "interests"
)
_UPSERT_STATE = f"""
INSERT INTO sequences ({_SEQ_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
WHERE NOT EXISTS (SELECT 1 FROM person_tombstones WHERE person_id = ?1 AND delete_ts >= ?7)
ON CONFLICT (person_id) DO UPDATE SET events = excluded.events, event_count = excluded.event_count,
    first_ts_ms = excluded.first_ts_ms, last_ts_ms = excluded.last_ts_ms, platforms = excluded.platforms,
    write_ts = excluded.write_ts
WHERE excluded.write_ts >= sequences.write_ts"""
_UPSERT_PROFILE = f"""
INSERT INTO profiles ({_PROFILE_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
WHERE NOT EXISTS (SELECT 1 FROM person_tombstones WHERE person_id = ?1 AND delete_ts >= ?8)
ON CONFLICT (person_id, model_version) DO UPDATE SET vector = excluded.vector,
    event_count = excluded.event_count, first_ts_ms = excluded.first_ts_ms, last_ts_ms = excluded.last_ts_ms,
    platforms = excluded.platforms, write_ts = excluded.write_ts, updated_ms = excluded.updated_ms,
    interests = excluded.interests
WHERE excluded.write_ts >= profiles.write_ts"""
_UPSERT_LINK = """
INSERT INTO identity_links (anon_person_id, person_id, ts_ms) SELECT ?1, ?2, ?3
WHERE NOT EXISTS (SELECT 1 FROM link_tombstones WHERE anon_person_id = ?1 AND delete_ts >= ?3 * 1048576)
ON CONFLICT (anon_person_id) DO UPDATE SET person_id = excluded.person_id, ts_ms = excluded.ts_ms
WHERE (excluded.ts_ms, excluded.person_id) >= (identity_links.ts_ms, identity_links.person_id)"""
_TOMBSTONE_PERSON = """
INSERT INTO person_tombstones (person_id, delete_ts) VALUES (?, ?)
ON CONFLICT (person_id) DO UPDATE SET delete_ts = max(delete_ts, excluded.delete_ts)"""
_TOMBSTONE_LINK = """
INSERT INTO link_tombstones (anon_person_id, delete_ts) VALUES (?, ?)
ON CONFLICT (anon_person_id) DO UPDATE SET delete_ts = max(delete_ts, excluded.delete_ts)"""

_SQL = {
    "states_in": f"SELECT {_SEQ_COLS} FROM sequences WHERE person_id IN",
    "erasures_in": "SELECT person_id, erased_ms, expires_ms FROM erasures WHERE person_id IN",
    "links_in": "SELECT anon_person_id, person_id FROM identity_links WHERE anon_person_id IN",
    "newest_of": "SELECT max(last_ts_ms) FROM (SELECT last_ts_ms FROM sequences WHERE person_id = ?1 "
    "UNION ALL SELECT last_ts_ms FROM profiles WHERE person_id = ?1)",
    "links_full_in": "SELECT anon_person_id, person_id, ts_ms FROM identity_links WHERE anon_person_id IN",
    "profile": f"SELECT {_PROFILE_COLS} FROM profiles WHERE person_id = ? AND model_version = ?",
    "profiles": f"SELECT {_PROFILE_COLS} FROM profiles WHERE person_id = ? "
    "ORDER BY write_ts DESC, model_version",
    "vectors": "SELECT person_id, vector FROM profiles WHERE model_version = ?",
    "states_after": f"SELECT {_SEQ_COLS} FROM sequences WHERE person_id > ? ORDER BY person_id LIMIT ?",
    "count_profiles": "SELECT count(*) FROM profiles WHERE model_version = ?",
    "links_of": "SELECT anon_person_id FROM identity_links WHERE (person_id = ?1 OR anon_person_id = ?1) "
    "AND ts_ms * 1048576 <= ?2",  # event_write_ts(ts_ms) <= the erasure's timestamp
}
_UPSERT_ERASURE = """
INSERT INTO erasures (person_id, erased_ms, expires_ms) VALUES (?, ?, ?) ON CONFLICT (person_id)
DO UPDATE SET erased_ms = max(erased_ms, excluded.erased_ms), expires_ms = excluded.expires_ms"""


def _state_from_row(row: Sequence[Any]) -> PersonState:
    return PersonState(row[0], unpack_events(row[1]), row[2], row[3], row[4], orjson.loads(row[5]), row[6])


def _profile_from_row(row: Sequence[Any]) -> Profile:
    pid, version, vector, count, first, last, platforms, write_ts, updated_ms, interests = row
    vec = vector_from_bytes(vector)
    return Profile(pid, version, vec, count, first, last, orjson.loads(platforms), write_ts, updated_ms,
                   unpack_interests(interests))


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), _CHUNK):
        yield unique[start : start + _CHUNK]


class SqliteStore:
    """``ProfileStore`` on one SQLite file (``:memory:`` works too, for tests)."""

    url_scheme = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        erasure_retention_days: int = 30,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        cache_mb: int = DEFAULT_CACHE_MB,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        if not 1 <= cache_mb <= 65_536:
            raise StoreError(f"sqlite cache_mb must be between 1 and 65536 (MiB), not {cache_mb}")
        self.path = path
        self.retention_ms = erasure_retention_days * 86_400_000
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous.upper()
        self.cache_mb = cache_mb
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._dim: int | None = None

    # -- plumbing ----------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the store's thread, translating SQLite errors."""
        if self._thread is None or self._conn is None:
            raise StoreError("the SQLite store is not open: await store.open() first")
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, partial(self._guarded, fn, *args)
        )

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._conn is not None
        try:
            return fn(self._conn, *args)
        except sqlite3.DatabaseError as exc:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise _translate(exc, self.path) from exc

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before WAL writes the header; no-op on a used file
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA cache_size = {-int(self.cache_mb) * 1024}")  # negative: KiB, not pages
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    async def _ensure_connected(self) -> None:
        if self._conn is not None:
            return
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        await self._ensure_connected()
        self._dim = await self._call(check_schema, self.path)

    async def close(self) -> None:
        if self._thread is None:
            return
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
        self._thread.shutdown(wait=True)
        self._conn, self._thread = None, None

    @property
    def vector_dim(self) -> int | None:
        return self._dim

    async def init_schema(self, vector_dim: int) -> None:
        """Create the tables if missing; the store is open afterwards."""
        await self._ensure_connected()
        await self._call(init_schema, vector_dim)
        await self.open()

    # -- worker hot path ---------------------------------------------------
    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._call(_query, sql, params)

    async def load_states(self, person_ids: Sequence[str]) -> dict[str, PersonState]:
        rows = await self._call(select_in, _SQL["states_in"], person_ids)
        return {row[0]: _state_from_row(row) for row in rows}

    async def load_erasures(self, person_ids: Sequence[str]) -> dict[str, ErasureMarker]:
        now_ms = int(time.time() * 1000)
        rows = await self._call(select_in, _SQL["erasures_in"], person_ids)
        return {r[0]: ErasureMarker(r[0], r[1]) for r in rows if r[2] > now_ms}

    async def resolve_links(self, anon_person_ids: Sequence[str]) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._call(select_in, _SQL["links_in"], anon_person_ids)}

    async def load_links(self, anon_person_ids: Sequence[str]) -> dict[str, IdentityLinkRecord]:
        rows = await self._call(select_in, _SQL["links_full_in"], anon_person_ids)
        return {r[0]: IdentityLinkRecord(r[0], r[1], r[2]) for r in rows}

    async def write_batch(self, batch: StoreBatch) -> None:
        for p in batch.profiles:
            if self._dim is not None and p.vector.size != self._dim:
                raise ValueError(
                    f"profile of {p.person_id} has a {p.vector.size}-dim vector; "
                    f"the store was initialised with --dim {self._dim}"
                )
        states = [
            (s.person_id, pack_events(s.events), *_COUNTS(s), orjson.dumps(s.platforms), s.write_ts)
            for s in batch.states
        ]
        profiles = [
            (p.person_id, p.model_version, vector_bytes(p.vector), *_COUNTS(p), orjson.dumps(p.platforms))
            + (p.write_ts, p.updated_ms, pack_interests(p.interests) or None)
            for p in batch.profiles
        ]
        links = [(link.anon_person_id, link.person_id, link.ts_ms) for link in batch.links]
        oldest = {s.person_id: s.events[0].ts_ms for s in batch.states if s.events}
        await self._call(_write, states, profiles, links, list(batch.removed_states), oldest)

    # -- queries -----------------------------------------------------------
    async def get_profile(self, person_id: str, model_version: str) -> Profile | None:
        rows = await self._rows(_SQL["profile"], (person_id, model_version))
        return _profile_from_row(rows[0]) if rows else None

    async def get_profiles(self, person_id: str) -> list[Profile]:
        return [_profile_from_row(r) for r in await self._rows(_SQL["profiles"], (person_id,))]

    async def nearest_people(
        self, vector: np.ndarray, model_version: str, k: int, exclude: Sequence[str] = ()
    ) -> list[tuple[str, float]]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        rows = [r for r in await self._rows(_SQL["vectors"], (model_version,)) if len(r[1]) == 4 * query.size]
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), query.size)
        return top_k([r[0] for r in rows], matrix, query, k, exclude)

    async def iter_states(self, after: str | None, limit: int) -> list[PersonState]:
        rows = await self._rows(_SQL["states_after"], (after if after is not None else "", limit))
        return [_state_from_row(r) for r in rows]

    async def count_profiles(self, model_version: str) -> int:
        return int((await self._rows(_SQL["count_profiles"], (model_version,)))[0][0])

    async def count_states(self) -> int:
        return int((await self._rows("SELECT count(*) FROM sequences", ()))[0][0])

    # -- erasure -----------------------------------------------------------
    async def forget(self, person_id: str, erased_ms: int) -> ForgetReceipt:
        expires_ms = int(time.time() * 1000) + self.retention_ms
        return await self._call(_forget, person_id, erased_ms, expires_ms)


# -- functions run on the store thread -----------------------------------------
# Result codes of a failing disk, not of bad data: the worker holds the partition and retries.
_INFRASTRUCTURE = {
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL",
    "SQLITE_NOLFS", "SQLITE_READONLY", "SQLITE_INTERRUPT",
}


def _translate(exc: sqlite3.Error, path: str) -> StoreError:
    """Sort SQLite's errors: a busy, full, read-only or failing disk is ``StoreUnavailable`` (retry, hold)."""
    message = str(exc)
    code = str(getattr(exc, "sqlite_errorname", "") or "")
    if "locked" in message or "busy" in message:
        return StoreUnavailable(f"SQLite database {path} is busy ({message}); retry later")
    if "_".join(code.split("_")[:2]) in _INFRASTRUCTURE:  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
        return StoreUnavailable(f"SQLite database {path} cannot be written ({code or 'error'}: {message}); "
                                "check the disk, retrying")
    if "no such table" in message:
        return StoreError(f"SQLite database {path} has no profile tables ({message}); {INIT_HINT}")
    return StoreError(f"SQLite error on {path}: {message}")



def _query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def select_in(conn: sqlite3.Connection, prefix: str, ids: Sequence[str], tail: str = "") -> list[tuple[Any, ...]]:
    """``prefix (?, ?, ...) tail`` over ``ids``, in chunks below SQLite's variable limit: every chunk's rows."""
    out: list[tuple[Any, ...]] = []
    for chunk in _chunks(ids):
        out.extend(conn.execute(f"{prefix} ({','.join('?' * len(chunk))}){tail}", chunk).fetchall())
    return out


Rows = list[tuple[Any, ...]]


def _write(conn: sqlite3.Connection, states: Rows, profiles: Rows, links: Rows, removed: Rows,
           oldest: dict[str, int]) -> None:
    with transaction(conn):
        # An erasure committed after the worker read its markers: writing would bring erased events back.
        # Refuse inside the transaction; the update stage retries, reads the marker and rebuilds the state.
        now = int(time.time() * 1000)
        for person, erased_ms, expires_ms in select_in(conn, _SQL["erasures_in"], list(oldest)):
            if expires_ms > now and oldest[person] <= erased_ms:  # the rule load_erasures applies
                raise StoreUnavailable(f"{person} was erased at {erased_ms} while this batch was in flight")
        conn.executemany("DELETE FROM sequences WHERE person_id = ? AND write_ts <= ?", removed)
        conn.executemany("DELETE FROM profiles WHERE person_id = ? AND write_ts <= ?", removed)
        conn.executemany(_TOMBSTONE_PERSON, removed)
        conn.executemany(_UPSERT_STATE, states)
        conn.executemany(_UPSERT_PROFILE, profiles)
        conn.executemany(_UPSERT_LINK, links)


def _forget(conn: sqlite3.Connection, person_id: str, erased_ms: int, expires_ms: int) -> ForgetReceipt:
    with transaction(conn):
        # Inside the transaction: cover every stored event, also those dated ahead of the clock.
        newest = conn.execute(_SQL["newest_of"], (person_id,)).fetchone()
        erased_ms = max(erased_ms, int(newest[0] or 0))
        ts = erasure_write_ts(erased_ms)
        profiles = conn.execute("DELETE FROM profiles WHERE person_id = ? AND write_ts <= ?", (person_id, ts))
        sequence = conn.execute(
            "DELETE FROM sequences WHERE person_id = ? AND write_ts <= ?", (person_id, ts)
        )
        anon_ids = [r[0] for r in conn.execute(_SQL["links_of"], (person_id, ts))]
        conn.executemany("DELETE FROM identity_links WHERE anon_person_id = ?", [(a,) for a in anon_ids])
        conn.executemany(_TOMBSTONE_LINK, [(a, ts) for a in anon_ids])
        conn.execute(_TOMBSTONE_PERSON, (person_id, ts))
        conn.execute(_UPSERT_ERASURE, (person_id, erased_ms, expires_ms))
    return ForgetReceipt(person_id, erased_ms, profiles.rowcount, sequence.rowcount > 0, len(anon_ids))
