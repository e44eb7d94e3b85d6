"""The Cassandra store under Cassandra's failures, over the wire to the fake cluster.

Each test injects a fault the way a real cluster reports it (error frames,
dropped connections, slow replies) and checks what the worker relies on:
``StoreUnavailable`` (retry the same batch), then success once the fault clears.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from streams.stores.base import StoreBatch, StoreUnavailable
from testkit.cqlserver import CqlServer

from .conftest import StoreEnv, fake_settings, running_store, unique_keyspace
from .records import profile, state


def people(n: int) -> list[str]:
    return [f"p-{uuid.uuid4().hex[:10]}" for _ in range(n)]


def batch_of(ids: list[str], ts: int = 5_000) -> StoreBatch:
    return StoreBatch(states=[state(p, ts) for p in ids], profiles=[profile(p, "v1", ts) for p in ids])


@pytest.mark.parametrize("kind", ["write_timeout", "unavailable", "overloaded"])
def test_write_faults_are_retryable(fake_env: StoreEnv, kind: str) -> None:
    assert fake_env.server is not None
    ids = people(40)
    fake_env.server.faults.inject(kind)
    with pytest.raises(StoreUnavailable):
        fake_env.run(fake_env.store.write_batch(batch_of(ids)))
    assert fake_env.server.stats.faults_raised >= 1
    fake_env.server.faults.clear()
    fake_env.run(fake_env.store.write_batch(batch_of(ids)))  # the worker's retry of the same batch
    assert len(fake_env.run(fake_env.store.load_states(ids))) == 40


def test_a_fault_midway_fails_the_whole_call(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    ids = people(60)
    fake_env.server.faults.inject("write_timeout", times=1, tables={"profiles"})
    with pytest.raises(StoreUnavailable, match="WriteTimeout"):
        fake_env.run(fake_env.store.write_batch(batch_of(ids)))
    fake_env.run(fake_env.store.write_batch(batch_of(ids)))
    assert fake_env.run(fake_env.store.count_profiles("v1")) == 60


@pytest.mark.parametrize("kind", ["read_timeout", "unavailable"])
def test_read_faults_are_retryable(fake_env: StoreEnv, kind: str) -> None:
    assert fake_env.server is not None
    ids = people(5)
    fake_env.run(fake_env.store.write_batch(batch_of(ids)))
    fake_env.server.faults.inject(kind)
    with pytest.raises(StoreUnavailable):
        fake_env.run(fake_env.store.load_states(ids))
    with pytest.raises(StoreUnavailable):
        fake_env.run(fake_env.store.nearest_people(profile(ids[0], "v1", 1).vector, "v1", 3))
    fake_env.server.faults.clear()
    assert set(fake_env.run(fake_env.store.load_states(ids))) == set(ids)


def _retry_until_ok(env: StoreEnv, batch: StoreBatch, timeout_s: float = 15.0) -> tuple[float, int]:
    """Back off and retry like the worker; returns (seconds until success, failed attempts)."""
    start, failures = time.monotonic(), 0
    while True:
        try:
            env.run(env.store.write_batch(batch))
            return time.monotonic() - start, failures
        except StoreUnavailable:
            failures += 1
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.05)


def test_unreachable_cluster_then_recovery(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    ids = people(20)
    fake_env.run(fake_env.store.write_batch(batch_of(ids[:5])))
    fake_env.server.faults.unreachable()
    with pytest.raises(StoreUnavailable):
        fake_env.run(fake_env.store.write_batch(batch_of(ids)))
    with pytest.raises(StoreUnavailable):
        fake_env.run(fake_env.store.load_states(ids))
    fake_env.server.faults.clear()
    elapsed, _ = _retry_until_ok(fake_env, batch_of(ids))
    assert elapsed < 15
    assert len(fake_env.run(fake_env.store.load_states(ids))) == 20


def test_one_node_down_is_routed_around(fake_env: StoreEnv) -> None:
    assert fake_env.server is not None
    fake_env.server.faults.unreachable({1})
    ids = people(30)
    _retry_until_ok(fake_env, batch_of(ids))  # the driver may need one try to notice the node is down
    fake_env.server.stats.reset()
    fake_env.run(fake_env.store.write_batch(batch_of(ids, 6_000)))
    assert fake_env.server.stats.by_node[1] == 0
    assert len(fake_env.run(fake_env.store.load_states(ids))) == 30


def test_concurrency_is_bounded_by_max_in_flight(cql_server: CqlServer, cql_faults: object) -> None:
    settings = fake_settings(cql_server, unique_keyspace(), max_in_flight=6)
    with running_store("cassandra", settings, cql_server) as env:
        cql_server.faults.set_delay(0.01)
        cql_server.stats.reset()
        env.run(env.store.write_batch(batch_of(people(60))))
        observed = cql_server.stats.max_in_flight
        assert 3 < observed <= 6, observed
        assert cql_server.stats.writes == 120

    wide = fake_settings(cql_server, unique_keyspace(), max_in_flight=64)
    with running_store("cassandra", wide, cql_server) as env:
        cql_server.stats.reset()
        env.run(env.store.write_batch(batch_of(people(60))))
        assert cql_server.stats.max_in_flight > 6  # the bound above was the store's, not the server's


def test_backpressure_holds_the_producer_not_the_loop(fake_env: StoreEnv) -> None:
    """While a slow batch waits for permits, the event loop keeps serving other coroutines."""
    assert fake_env.server is not None
    fake_env.server.faults.set_delay(0.01)
    ticks = 0

    async def scenario() -> None:
        nonlocal ticks
        write = asyncio.create_task(fake_env.store.write_batch(batch_of(people(80))))
        while not write.done():
            ticks += 1
            await asyncio.sleep(0.005)
        await write

    fake_env.run(scenario())
    assert ticks >= 3


def test_client_side_timeout_is_retryable(cql_server: CqlServer, cql_faults: object) -> None:
    settings = fake_settings(cql_server, unique_keyspace(), request_timeout_s=0.3)
    with running_store("cassandra", settings, cql_server) as env:
        ids = people(5)
        cql_server.faults.set_delay(0.6)  # slower than the request timeout: the driver gives up
        with pytest.raises(StoreUnavailable, match="OperationTimedOut"):
            env.run(env.store.write_batch(batch_of(ids)))
        cql_server.faults.set_delay(0)
        env.run(env.store.write_batch(batch_of(ids)))
        assert len(env.run(env.store.load_states(ids))) == 5
