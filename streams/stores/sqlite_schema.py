"""The SQLite store's tables, and the checks and upgrades of an existing file.

Kept apart from ``sqlite.py`` (the store itself): the schema changes on its own
schedule (each version's upgrade is written down in :func:`migrate`), and
``interest store init`` and the store's open both need it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from streams.stores.base import StoreError
from streams.stores.codec import INIT_HINT

SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    person_id TEXT PRIMARY KEY, events BLOB NOT NULL, event_count INTEGER NOT NULL,
    first_ts_ms INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL, platforms BLOB NOT NULL,
    write_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    person_id TEXT NOT NULL, model_version TEXT NOT NULL, vector BLOB NOT NULL,
    event_count INTEGER NOT NULL, first_ts_ms INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL,
    platforms BLOB NOT NULL, write_ts INTEGER NOT NULL, updated_ms INTEGER NOT NULL, interests BLOB,
    PRIMARY KEY (person_id, model_version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS profiles_by_version ON profiles (model_version);
CREATE TABLE IF NOT EXISTS identity_links (
    anon_person_id TEXT PRIMARY KEY, person_id TEXT NOT NULL, ts_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_person ON identity_links (person_id);
CREATE TABLE IF NOT EXISTS person_tombstones (person_id TEXT PRIMARY KEY, delete_ts INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_tombstones (anon_person_id TEXT PRIMARY KEY, delete_ts INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erasures (
    person_id TEXT PRIMARY KEY, erased_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
TABLES = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)

def check_schema(conn: sqlite3.Connection, path: str) -> int | None:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in TABLES if t not in present]
    if missing:
        raise StoreError(f"SQLite database {path} is missing tables {', '.join(missing)}; {INIT_HINT}")
    if "interests" not in columns(conn, "profiles"):
        raise StoreError(f"SQLite database {path} has an older schema (no interests column); {INIT_HINT} to upgrade")
    row = conn.execute("SELECT value FROM meta WHERE key = 'vector_dim'").fetchone()
    return int(row[0]) if row else None


def init_schema(conn: sqlite3.Connection, vector_dim: int) -> None:
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'vector_dim'").fetchone()
    if row and int(row[0]) != vector_dim:
        raise StoreError(
            f"the SQLite store holds {row[0]}-dim vectors; cannot re-initialise with --dim {vector_dim}"
        )
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('vector_dim', ?)", (str(vector_dim),))
    migrate(conn)


SCHEMA_VERSION = "3"


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older file to this schema, in one transaction.

    * Version 2: write timestamps are event ms * 2**20 (``schemas.sequence``),
      no longer microseconds.  Old rows' ``write_ts`` stay as they are (any new
      write outranks them), but an erasure's tombstone must keep shadowing what
      it erased: it is rewritten at ``erasure_write_ts`` of its millisecond.
    * Version 3: profiles carry their interests (a nullable blob: rows written
      before it read as "no interests" until the person's next event).
    """
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and row[0] == SCHEMA_VERSION and "interests" in columns(conn, "profiles"):
        return
    with transaction(conn):
        if row is not None and row[0] == "1":
            for table in ("person_tombstones", "link_tombstones"):
                conn.execute(f"UPDATE {table} SET delete_ts = ((delete_ts / 1000) << 20) | {(1 << 20) - 1}")
        if "interests" not in columns(conn, "profiles"):
            conn.execute("ALTER TABLE profiles ADD COLUMN interests BLOB")
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (SCHEMA_VERSION,))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``: take the write lock up front, so a busy database fails before any work."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
