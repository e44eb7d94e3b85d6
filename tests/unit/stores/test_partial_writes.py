"""A crash between any two statements of one batch's Cassandra write converges after the replay.

Cassandra has no transaction across tables: a batch's write is many statements.
The fake cluster fails every write to one table (as a node timing out mid-batch
does); the worker then dies and a fresh worker (no cache) replays the same
records.  Whichever statements had landed, the store must end with a state and
a profile that match each other, for every person.
"""

from __future__ import annotations

from typing import Any

import pytest

from model.runtime import EncoderRuntime
from schemas.events import CanonicalEvent
from schemas.records import OutMessage
from schemas.settings import Settings
from streams.stores.base import StoreUnavailable
from streams.updater import ProfileUpdater
from testkit.cqlserver import CqlServer

from .conftest import fake_settings, running_store, unique_keyspace

T0 = 1_700_000_000_000


async def _no_links(_: list[OutMessage]) -> None:
    raise AssertionError("no links in this test")


@pytest.mark.parametrize("table", ["profiles", "sequences"])
def test_a_crash_mid_write_converges_on_replay(
    cql_server: CqlServer, cql_faults: object, model_registry: tuple[str, str], table: str
) -> None:
    root, version = model_registry
    runtime = EncoderRuntime.load(root, version, "no")
    settings = Settings(person_partitions=1, seq_len=50)
    people = [f"pw-{table}-{n}" for n in range(30)]
    records = [CanonicalEvent(f"{p}-e{i}", p, "web", p, "click", f"i{i}", T0 + 1000 * i)
               for p in people for i in range(3)]
    with running_store("cassandra", fake_settings(cql_server, unique_keyspace()), cql_server, init=False) as env:
        env.run(env.store.init_schema(runtime.dim))
        _crash_then_replay(env, cql_server, runtime, settings, people, records, table, version)


def _crash_then_replay(env: Any, server: CqlServer, runtime: EncoderRuntime, settings: Settings,
                       people: list[str], records: list[CanonicalEvent], table: str, version: str) -> None:
    fake_env = env
    server.faults.inject("write_timeout", tables={table})
    crashed = ProfileUpdater(fake_env.store, lambda: runtime, _no_links, settings)
    with pytest.raises(StoreUnavailable):
        fake_env.run(crashed.process(records))
    server.faults.clear()
    restarted = ProfileUpdater(fake_env.store, lambda: runtime, _no_links, settings)  # a new worker: no cache
    fake_env.run(restarted.process(records))  # the replay of the uncommitted batch
    states = fake_env.run(fake_env.store.load_states(people))
    assert set(states) == set(people)
    for person in people:
        prof = fake_env.run(fake_env.store.get_profile(person, version))
        assert prof is not None, f"{person}: the state landed, its profile never did"
        assert (prof.write_ts, prof.event_count) == (states[person].write_ts, states[person].event_count)
