"""The fake cluster's own semantics, checked through the real driver (what the store tests rely on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement

from streams.stores.base import StoreBatch
from testkit.cqlserver import CqlServer
from testkit.cqlserver.fixtures import CQL_PASSWORD, CQL_USER, unique_keyspace

from .conftest import StoreEnv
from .records import state


@pytest.fixture
def cql(cql_server: CqlServer) -> Iterator[tuple[Any, str]]:
    cluster = Cluster(
        ["127.0.0.1"],
        port=cql_server.port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider(CQL_USER, CQL_PASSWORD),
    )
    session = cluster.connect()
    ks = unique_keyspace()
    session.execute(
        f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session.execute(f"CREATE TABLE {ks}.t (k text, c text, v bigint, PRIMARY KEY ((k), c))")
    yield session, ks
    cluster.shutdown()


def test_timestamps_reconcile_like_cassandra(cql: tuple[Any, str]) -> None:
    session, ks = cql
    session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ('a', 'x', 2) USING TIMESTAMP 20")
    session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ('a', 'x', 1) USING TIMESTAMP 10")  # older: lost
    assert session.execute(f"SELECT v FROM {ks}.t WHERE k = 'a'").one()[0] == 2
    session.execute(f"DELETE FROM {ks}.t USING TIMESTAMP 20 WHERE k = 'a'")  # a tie: the tombstone wins
    assert session.execute(f"SELECT v FROM {ks}.t WHERE k = 'a'").one() is None
    session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ('a', 'y', 3) USING TIMESTAMP 21")
    assert [tuple(r) for r in session.execute(f"SELECT c, v FROM {ks}.t WHERE k = 'a'")] == [("y", 3)]


def test_ttl_and_clock(cql: tuple[Any, str], cql_server: CqlServer) -> None:
    session, ks = cql
    session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ('b', 'x', 1) USING TTL 60")
    assert 0 < session.execute(f"SELECT ttl(v) FROM {ks}.t WHERE k = 'b'").one()[0] <= 60
    cql_server.advance_clock(61)
    try:
        assert session.execute(f"SELECT v FROM {ks}.t WHERE k = 'b'").one() is None
    finally:
        cql_server.advance_clock(-61)


def test_refuses_what_cassandra_refuses(cql: tuple[Any, str]) -> None:
    session, ks = cql
    with pytest.raises(InvalidRequest, match="ALLOW FILTERING"):
        session.execute(f"SELECT k FROM {ks}.t WHERE v = 1")
    assert list(session.execute(f"SELECT k FROM {ks}.t WHERE v = 1 ALLOW FILTERING")) == []
    with pytest.raises(InvalidRequest, match="does not exist"):
        session.execute(f"SELECT k FROM {ks}.nope")


def test_paging_resumes_by_position(cql: tuple[Any, str]) -> None:
    session, ks = cql
    for i in range(25):
        session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ('p{i}', 'x', {i})")
    pages = session.execute(SimpleStatement(f"SELECT k FROM {ks}.t", fetch_size=10))
    first = [r[0] for r in pages.current_rows]
    session.execute(f"DELETE FROM {ks}.t WHERE k = '{first[0]}'")  # rows already read do not shift the pages
    rest = [r[0] for r in pages if r[0] not in first]
    assert len(first) == 10 and len(rest) == 15 and len(set(first + rest)) == 25


def test_driver_reprepares_after_a_node_forgets(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    fake_env.run(fake_env.store.write_batch(StoreBatch(states=[state("a", 1)])))
    fake_env.server.call(fake_env.server.db.prepared.clear)  # like a restarted node
    fake_env.run(fake_env.store.write_batch(StoreBatch(states=[state("b", 2)])))
    assert set(fake_env.run(fake_env.store.load_states(["a", "b"]))) == {"a", "b"}
