"""Fixtures of the store suite: one ``store_env`` per backend, each test on a fresh database.

``store_env`` is parametrized over:

* ``sqlite``: a file in the test's tmp dir;
* ``cassandra``: the in-process CQL server (``testkit.cqlserver``) through the
  real cassandra-driver, a fresh keyspace per test;
* ``real``: a real cluster named by ``INTEREST_TEST_CASSANDRA=host:port``
  (optional ``INTEREST_TEST_CASSANDRA_USERNAME/_PASSWORD/_DC``), marked
  ``cassandra`` and skipped when the variable is unset.

A test calls ``store_env.run(coro)``: the store lives on one event loop
(``asyncio.Runner``) for the whole test, like in the worker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schemas.settings import Settings
from streams.stores.base import ProfileStore
from streams.stores.factory import open_store
from testkit.cqlserver import CqlServer
from testkit.cqlserver.fixtures import (  # noqa: F401  (fixtures re-exported to this directory)
    CQL_PASSWORD,
    CQL_USER,
    cql_faults,
    cql_server,
    cql_server_4x,
    unique_keyspace,
)

DIM = 8
T = TypeVar("T")
REAL_CLUSTER = os.environ.get("INTEREST_TEST_CASSANDRA")


def make_settings(**fields: Any) -> Settings:
    """``Settings(**fields)``: keeps type checkers from demanding every field (no pydantic mypy plugin)."""
    return Settings(**fields)


def fake_settings(
    server: CqlServer, keyspace: str, *, user: str = CQL_USER, password: str = CQL_PASSWORD, **options: Any
) -> Settings:
    """Settings for the fake cluster: protocol v4 pinned, fast reconnects, RF 1 (so routing is checkable)."""
    opts: dict[str, Any] = {
        "protocol_version": 4,
        "reconnect_base_s": 0.05,
        "reconnect_max_s": 0.2,
        "connect_timeout_s": 2,
    }
    opts.update(options)
    return make_settings(
        store_url=server.url(keyspace, **opts),
        cassandra_username=user or None,
        cassandra_password=password or None,
        cassandra_replication="datacenter1:1",
        cassandra_request_timeout_s=5,
    )


@dataclass
class StoreEnv:
    backend: str
    store: ProfileStore
    settings: Settings
    runner: asyncio.Runner
    server: CqlServer | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)


def _real_settings(keyspace: str) -> Settings:
    assert REAL_CLUSTER
    dc = os.environ.get("INTEREST_TEST_CASSANDRA_DC", "datacenter1")
    return make_settings(
        store_url=f"cassandra://{REAL_CLUSTER}/{keyspace}?dc={dc}",
        cassandra_username=os.environ.get("INTEREST_TEST_CASSANDRA_USERNAME"),
        cassandra_password=os.environ.get("INTEREST_TEST_CASSANDRA_PASSWORD"),
        cassandra_replication=f"{dc}:1",
        cassandra_consistency="LOCAL_ONE",
    )


@contextmanager
def running_store(
    backend: str, settings: Settings, server: CqlServer | None = None, init: bool = True
) -> Iterator[StoreEnv]:
    """A store on its own event loop, schema applied (unless ``init=False``), closed afterwards."""
    with asyncio.Runner() as runner:
        store = open_store(settings)
        try:
            if init:
                runner.run(store.init_schema(DIM))
            yield StoreEnv(backend, store, settings, runner, server)
        finally:
            if backend == "real":
                runner.run(_drop_keyspace(store))
            runner.run(store.close())


@pytest.fixture(
    params=["sqlite", "cassandra", "cassandra-4x-blob", pytest.param("real", marks=pytest.mark.cassandra)]
)
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    backend: str = request.param
    server: CqlServer | None = None
    if backend == "sqlite":
        settings = make_settings(store_url=f"sqlite:///{tmp_path}/profiles.db")
    elif backend == "cassandra":
        server = request.getfixturevalue("cql_server")
        request.getfixturevalue("cql_faults")
        settings = fake_settings(server, unique_keyspace(), fetch_size=7)
    elif backend == "cassandra-4x-blob":
        server = request.getfixturevalue("cql_server_4x")
        settings = fake_settings(server, unique_keyspace(), user="", password="", fetch_size=7)
    else:
        if not REAL_CLUSTER:
            pytest.skip("set INTEREST_TEST_CASSANDRA=host:port to run against a real cluster")
        settings = _real_settings(unique_keyspace("itest"))
    with running_store(backend, settings, server) as env:
        yield env


@pytest.fixture
def fake_env(request: pytest.FixtureRequest) -> Iterator[StoreEnv]:
    """The Cassandra store on the 3-node fake cluster (faults cleared around the test)."""
    server: CqlServer = request.getfixturevalue("cql_server")
    request.getfixturevalue("cql_faults")
    with running_store("cassandra", fake_settings(server, unique_keyspace()), server) as env:
        yield env


async def _drop_keyspace(store: ProfileStore) -> None:
    session = getattr(store, "_session", None)
    keyspace = getattr(getattr(store, "cfg", None), "keyspace", None)
    if session is not None and keyspace:
        await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}")
