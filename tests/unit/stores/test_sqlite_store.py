"""SQLite specifics: setup errors, lock contention, WAL, erasure expiry, batch speed."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from schemas.settings import Settings
from streams.stores import sqlite as sqlite_module
from streams.stores import sqlite_schema
from streams.stores.base import StoreBatch, StoreError, StoreUnavailable
from streams.stores.factory import open_store

from .conftest import DIM, make_settings, running_store
from .records import profile, state


def settings_for(path: Path, query: str = "") -> Settings:
    return make_settings(store_url=f"sqlite:///{path}{query}")


def test_open_without_init_says_run_init(tmp_path: Path) -> None:
    with (
        pytest.raises(StoreError, match="interest store init"),
        running_store("sqlite", settings_for(tmp_path / "fresh.db"), init=False) as env,
    ):
        env.run(env.store.open())


def test_relative_paths_and_missing_directories_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with running_store("sqlite", make_settings(store_url="sqlite:///data/sub/profiles.db")) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state("a", 1)])))
    assert (tmp_path / "data" / "sub" / "profiles.db").exists()


def test_wal_mode_and_reinit_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with running_store("sqlite", settings_for(path)) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state("a", 1)])))
        env.run(env.store.init_schema(DIM))  # again: nothing lost
        assert env.run(env.store.count_states()) == 1
        with pytest.raises(StoreError, match="8-dim"):
            env.run(env.store.init_schema(DIM * 2))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_busy_database_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    with running_store("sqlite", settings_for(path, "?busy_timeout_ms=50")) as env:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(StoreUnavailable, match="busy"):
                env.run(env.store.write_batch(StoreBatch(states=[state("a", 1)])))
        finally:
            other.execute("ROLLBACK")
            other.close()
        env.run(env.store.write_batch(StoreBatch(states=[state("a", 1)])))
        assert env.run(env.store.count_states()) == 1


def test_wrong_dimension_is_bad_data(tmp_path: Path) -> None:
    bad = profile("a", "v1", 1, vector=np.ones(DIM + 2, dtype=np.float32))
    with (
        running_store("sqlite", settings_for(tmp_path / "d.db")) as env,
        pytest.raises(ValueError, match="--dim 8"),
    ):
        env.run(env.store.write_batch(StoreBatch(profiles=[bad])))


def test_erasure_marker_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_store("sqlite", settings_for(tmp_path / "e.db")) as env:
        env.run(env.store.forget("carol", 1_000))
        assert "carol" in env.run(env.store.load_erasures(["carol"]))
        later = time.time() + 31 * 86_400
        monkeypatch.setattr(sqlite_module.time, "time", lambda: later)
        assert env.run(env.store.load_erasures(["carol"])) == {}


def test_unknown_url_option_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="busy_timeout"):
        open_store(settings_for(tmp_path / "x.db", "?busy_timeout=5"))


def test_a_new_file_gets_16k_pages_and_the_page_cache_an_old_file_keeps_its_pages(tmp_path: Path) -> None:
    """New stores get the pages and cache the hot path was measured with; a file made before keeps working."""
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    sqlite_schema.init_schema(conn, DIM)
    conn.close()
    def cache_size(store: object) -> int:
        assert isinstance(store, sqlite_module.SqliteStore)
        return int(env.run(store._call(lambda c: c.execute("PRAGMA cache_size").fetchone()[0])))

    with running_store("sqlite", settings_for(old, "?cache_mb=8")) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state(f"p{i}", 1, n_events=50) for i in range(300)])))
        assert cache_size(env.store) == -8 * 1024  # KiB: what the URL asked for
        assert env.run(env.store.count_states()) == 300
    with running_store("sqlite", settings_for(tmp_path / "new.db")) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state("a", 1)])))
        assert cache_size(env.store) == -64 * 1024
    page_size: dict[str, int] = {}
    for name in ("old.db", "new.db"):
        with closing(sqlite3.connect(tmp_path / name)) as conn:
            page_size[name] = conn.execute("PRAGMA page_size").fetchone()[0]
            if name == "old.db":
                assert conn.execute("SELECT count(*) FROM sequences").fetchone()[0] == 300
    assert page_size == {"old.db": 4096, "new.db": 16_384}


@pytest.mark.parametrize(("query", "message"), [("?cache_mb=0", "between 1 and 65536"),
                                                 ("?cache_mb=lots", "cache_mb must be an integer")])
def test_a_bad_cache_size_is_a_clear_error(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(settings_for(tmp_path / "x.db", query))


def test_a_worker_sized_batch_is_fast(tmp_path: Path) -> None:
    """3 000 states + 3 000 profiles (64-dim) in one transaction: the worker's hot path."""
    ids = [f"p{i}" for i in range(3_000)]
    vec = np.ones(64, dtype=np.float32) / 8
    batch = StoreBatch(
        states=[state(p, 10, n_events=50) for p in ids],
        profiles=[profile(p, "v1", 10, vector=vec) for p in ids],
    )
    with running_store("sqlite", settings_for(tmp_path / "fast.db"), init=False) as env:
        env.run(env.store.init_schema(64))
        start = time.perf_counter()
        env.run(env.store.write_batch(batch))
        elapsed = time.perf_counter() - start
        assert env.run(env.store.count_profiles("v1")) == 3_000
        assert len(env.run(env.store.load_states(ids))) == 3_000
    assert elapsed < 5.0, f"write_batch of 6 000 rows took {elapsed:.2f}s"
