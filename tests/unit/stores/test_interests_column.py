"""Stores created before profiles had interests: `interest store init` adds the column, nothing is lost.

What a user relies on: upgrading a running deployment needs no data migration;
re-running `interest store init` (the worker does it itself on SQLite) adds the
interests column, keeps every row, and the old rows read as "no interests".
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from schemas.sequence import Interest
from streams.stores.base import StoreBatch, StoreError
from streams.stores.cassandra_config import load_queries, render_cql
from streams.stores.factory import open_store
from testkit.cqlserver import CqlServer

from .conftest import DIM, fake_settings, make_settings, unique_keyspace
from .records import profile, unit

OLD_PROFILES = """CREATE TABLE profiles (
    person_id TEXT NOT NULL, model_version TEXT NOT NULL, vector BLOB NOT NULL,
    event_count INTEGER NOT NULL, first_ts_ms INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL,
    platforms BLOB NOT NULL, write_ts INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (person_id, model_version)
) WITHOUT ROWID"""


def test_sqlite_file_of_schema_2_is_upgraded_by_init(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    settings = make_settings(store_url=f"sqlite:///{path}")

    async def write_old_row() -> None:
        store = open_store(settings)
        await store.init_schema(DIM)
        await store.write_batch(StoreBatch(profiles=[profile("p1", "v1", 5_000)]))
        await store.close()

    asyncio.run(write_old_row())
    with sqlite3.connect(path) as conn:  # make it the schema-2 file an older release left behind
        conn.execute("ALTER TABLE profiles RENAME TO profiles_new")
        conn.execute(OLD_PROFILES)
        conn.execute("INSERT INTO profiles SELECT person_id, model_version, vector, event_count, first_ts_ms, "
                     "last_ts_ms, platforms, write_ts, updated_ms FROM profiles_new")
        conn.execute("DROP TABLE profiles_new")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    async def reopen() -> None:
        store = open_store(settings)
        with pytest.raises(StoreError, match="older schema.*store init"):
            await store.open()
        await store.close()
        store = open_store(settings)
        await store.init_schema(DIM)
        old = await store.get_profile("p1", "v1")
        assert old is not None and old.interests == ()
        row = profile("p1", "v1", 6_000)
        row.interests = (Interest(unit(3), 1.0, ("i1",)),)
        await store.write_batch(StoreBatch(profiles=[row]))
        got = await store.get_profile("p1", "v1")
        assert got is not None and got.interests[0].items == ("i1",)
        await store.close()

    asyncio.run(reopen())


def test_cassandra_keyspace_without_the_column_is_upgraded_by_init(cql_server: CqlServer) -> None:
    keyspace = unique_keyspace()
    settings = fake_settings(cql_server, keyspace)
    old_ddl = [c.replace("    interests     blob,\n", "").replace("interests     blob,", "")
               for c in render_cql(keyspace, "datacenter1:1", DIM, native=True)]
    assert all("interests" not in c for c in old_ddl)
    assert "interests" in load_queries(keyspace)["put_profile"]

    async def scenario() -> None:
        store = open_store(settings)
        session = await store._ensure_connected()  # type: ignore[attr-defined]
        for cql in old_ddl:
            session.execute(cql)
        with pytest.raises(StoreError, match="store init"):
            await store.open()
        await store.init_schema(DIM)  # adds the column and opens
        row = profile("p1", "v1", 6_000)
        row.interests = (Interest(unit(3), 0.6, ("i1", "i2")), Interest(unit(4), 0.4, ("i3",)))
        await store.write_batch(StoreBatch(profiles=[row]))
        got = await store.get_profile("p1", "v1")
        assert got is not None and [i.items for i in got.interests] == [("i1", "i2"), ("i3",)]
        await store.init_schema(DIM)  # idempotent: the column exists now
        await store.close()

    asyncio.run(scenario())


def test_interests_blob_round_trips_and_refuses_vectors_of_mixed_sizes() -> None:
    """Both stores keep a profile's interests as one blob: every float and item comes back, in order."""
    import numpy as np

    from streams.stores.codec import pack_interests, unpack_interests

    grid = np.arange(3 * 16, dtype=np.float64).reshape(16, 3) / 7  # columns: strided float64 views
    interests = tuple(Interest(grid[:, n], 0.5 - n / 10, (f"i{n}", "shared")) for n in range(3))
    back = unpack_interests(pack_interests(interests))
    assert [(i.weight, i.items) for i in back] == [(i.weight, i.items) for i in interests]
    assert all(np.array_equal(got.vector, want.vector.astype(np.float32))
               for got, want in zip(back, interests, strict=True))
    assert pack_interests(()) == b"" and unpack_interests(b"") == ()
    with pytest.raises(ValueError, match=r"differ in size: \[16, 8\]"):
        pack_interests((interests[0], Interest(np.zeros(8, np.float32), 0.1, ("x",))))
