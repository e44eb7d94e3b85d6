"""Cassandra specifics: timestamps on the wire, routing, TTL, schema and connection errors, TLS."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster

from schemas.sequence import IdentityLinkRecord, erasure_write_ts, event_write_ts
from streams.stores.base import StoreBatch, StoreError, StoreUnavailable
from streams.stores.cassandra import CassandraStore
from streams.stores.factory import open_store
from testkit.cqlserver import CqlServer
from testkit.cqlserver.fixtures import CQL_PASSWORD, CQL_USER
from testkit.helpers import self_signed_cert

from .conftest import DIM, StoreEnv, fake_settings, make_settings, running_store, unique_keyspace
from .records import profile, state


def raw_session(server: CqlServer) -> tuple[Cluster, object]:
    cluster = Cluster(
        ["127.0.0.1"],
        port=server.port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider(CQL_USER, CQL_PASSWORD) if server.users else None,
    )
    return cluster, cluster.connect()


def test_writes_carry_the_data_timestamp(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    ks = fake_env.settings.cassandra_target()[2]
    fake_env.run(
        fake_env.store.write_batch(
            StoreBatch(
                states=[state("alice", 1_234_567)],
                profiles=[profile("alice", "v1", 1_234_567)],
                links=[IdentityLinkRecord("anon:web:x", "alice", 999)],
            )
        )
    )
    fake_env.run(fake_env.store.forget("bob", 5_000))
    cluster, session = raw_session(fake_env.server)
    try:
        q = session.execute  # type: ignore[attr-defined]
        assert (
            q(f"SELECT writetime(events) FROM {ks}.sequences WHERE person_id = 'alice'").one()[0] == 1_234_567
        )
        assert (
            q(f"SELECT writetime(embedding) FROM {ks}.profiles WHERE person_id = 'alice'").one()[0]
            == 1_234_567
        )
        assert (
            q(
                f"SELECT writetime(person_id) FROM {ks}.identity_links WHERE anon_person_id = 'anon:web:x'"
            ).one()[0]
            == event_write_ts(999)
        )
        row = q(
            f"SELECT writetime(erased_ms), ttl(erased_ms) FROM {ks}.erasures WHERE person_id = 'bob'"
        ).one()
        assert row[0] == erasure_write_ts(5_000) and 29 * 86_400 < row[1] <= 30 * 86_400
    finally:
        cluster.shutdown()


def test_requests_are_token_aware(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    stats = fake_env.server.stats
    stats.reset()
    ids = [f"p-{i}" for i in range(90)]
    fake_env.run(fake_env.store.write_batch(StoreBatch(states=[state(p, 10) for p in ids])))
    fake_env.run(fake_env.store.load_states(ids))
    assert stats.requests == 180
    assert stats.misrouted == 0  # every single-partition request went to the partition's replica
    assert len(stats.by_node) == 3


def test_erasure_marker_expires_after_retention(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    fake_env.run(fake_env.store.forget("carol", 1_000))
    assert fake_env.run(fake_env.store.load_erasures(["carol"]))["carol"].erased_ms == 1_000
    fake_env.server.advance_clock(31 * 86_400)
    try:
        assert fake_env.run(fake_env.store.load_erasures(["carol"])) == {}
    finally:
        fake_env.server.advance_clock(-31 * 86_400)


def test_vector_mode_follows_the_cluster(store_env: StoreEnv) -> None:
    if not isinstance(store_env.store, CassandraStore):
        pytest.skip("Cassandra only")
    expected = {"cassandra": True, "cassandra-4x-blob": False}.get(
        store_env.backend, store_env.store.wants_native()
    )
    assert store_env.store.native is expected
    if store_env.store.native:
        wrong = profile("x", "v1", 1, vector=np.ones(DIM + 1, dtype=np.float32))
        with pytest.raises(ValueError, match="9-dim"):
            store_env.run(store_env.store.write_batch(StoreBatch(profiles=[wrong])))


def test_native_vectors_on_4x_say_what_to_do(cql_server_4x: CqlServer) -> None:
    settings = fake_settings(cql_server_4x, unique_keyspace(), user="", password="", vector_mode="native")
    with pytest.raises(StoreError, match="vector_mode=blob"), running_store("cassandra", settings):
        pass


def test_reinit_with_another_dimension_is_refused(fake_env: StoreEnv) -> None:
    fresh = open_store(fake_env.settings)
    with pytest.raises(StoreError, match="vector<float, 8>"):
        fake_env.run(fresh.init_schema(DIM * 2))
    fake_env.run(fresh.close())


# -- operator errors ----------------------------------------------------------
def test_missing_keyspace_says_run_init(cql_server: CqlServer) -> None:
    settings = fake_settings(cql_server, unique_keyspace("missing"))
    expected = r"keyspace 'missing_\w+' does not exist.*interest store init"
    with (
        pytest.raises(StoreError, match=expected) as err,
        running_store("cassandra", settings, init=False) as env,
    ):
        env.run(env.store.open())
    assert not isinstance(err.value, StoreUnavailable)


def test_missing_table_says_run_init(cql_server: CqlServer) -> None:
    settings = fake_settings(cql_server, unique_keyspace())
    keyspace = settings.cassandra_target()[2]
    with running_store("cassandra", settings):
        pass
    cluster, session = raw_session(cql_server)
    session.execute(f"DROP TABLE {keyspace}.erasures")  # type: ignore[attr-defined]
    cluster.shutdown()
    with (
        pytest.raises(StoreError, match=rf"table {keyspace}.erasures is missing.*interest store init"),
        running_store("cassandra", settings, init=False) as env,
    ):
        env.run(env.store.open())


@pytest.mark.parametrize(("user", "password"), [(CQL_USER, "wrong"), ("", "")])
def test_bad_credentials_are_an_operator_error(cql_server: CqlServer, user: str, password: str) -> None:
    settings = fake_settings(cql_server, unique_keyspace(), user=user, password=password)
    with (
        pytest.raises(StoreError, match="rejected the login.*INTEREST_CASSANDRA_USERNAME") as err,
        running_store("cassandra", settings, init=False) as env,
    ):
        env.run(env.store.open())
    assert not isinstance(err.value, StoreUnavailable)


def test_no_reachable_host_is_retryable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(
        store_url=f"cassandra://127.0.0.1:{port}/nowhere?protocol_version=4&connect_timeout_s=1"
    )
    with (
        pytest.raises(StoreUnavailable, match=f"no Cassandra host reachable at 127.0.0.1:{port}"),
        running_store("cassandra", settings, init=False) as env,
    ):
        env.run(env.store.open())


def test_protocol_version_is_negotiated_when_not_pinned(cql_server: CqlServer) -> None:
    settings = make_settings(
        store_url=cql_server.url(unique_keyspace()),
        cassandra_username=CQL_USER,
        cassandra_password=CQL_PASSWORD,
        cassandra_replication="datacenter1:1",
    )
    with running_store("cassandra", settings) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state("dave", 10)])))
        assert list(env.run(env.store.load_states(["dave"]))) == ["dave"]


# -- TLS ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CqlServer, Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_cert(directory, "server")
    other, _ = self_signed_cert(directory, "other")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = CqlServer(nodes=1, ssl_context=context).start()
    yield server, cert, other
    server.stop()


def test_tls_with_ca_and_hostname_check(tls_server: tuple[CqlServer, Path, Path]) -> None:
    server, cert, _ = tls_server
    settings = fake_settings(server, unique_keyspace(), user="", password="")
    settings = settings.model_copy(update={"cassandra_tls_ca_file": str(cert)})
    with running_store("cassandra", settings) as env:
        env.run(env.store.write_batch(StoreBatch(states=[state("erin", 10)])))
        assert list(env.run(env.store.load_states(["erin"]))) == ["erin"]


def test_tls_with_the_wrong_ca_is_an_operator_error(tls_server: tuple[CqlServer, Path, Path]) -> None:
    server, _, other = tls_server
    settings = fake_settings(server, unique_keyspace(), user="", password="")
    settings = settings.model_copy(update={"cassandra_tls_ca_file": str(other)})
    with (
        pytest.raises(StoreError, match="TLS handshake .* failed") as err,
        running_store("cassandra", settings, init=False) as env,
    ):
        env.run(env.store.open())
    assert not isinstance(err.value, StoreUnavailable)
