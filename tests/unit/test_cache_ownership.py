"""A record of a partition this worker no longer owns is applied, but never cached.

Why: after a revocation Faust can still hand the old owner an envelope (a put parked on a full stream
buffer outlives the buffer's clearing).  Applying it is harmless, the store keeps the newer window;
caching it is not: if the partition came back, the stale cache would be merged and written over what
the other owner wrote meanwhile, and those events would be lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.events import CanonicalEvent
from schemas.settings import Settings
from streams.stores.sqlite import SqliteStore
from streams.updater import ProfileUpdater

SETTINGS = Settings(person_partitions=1, seq_len=50)


def event(n: int) -> CanonicalEvent:
    return CanonicalEvent.from_dict({"event_id": f"e{n}", "person_id": "p1", "platform": "web",
                                     "platform_user_id": "p1", "action": "click", "item_id": f"i{n}",
                                     "ts_ms": 1_700_000_000_000 + 1000 * n, "weight": 1.0})


async def _no_send(_: Any) -> None:
    raise AssertionError("no links here")


async def _returning_partition(tmp: str) -> list[str]:
    store = SqliteStore(f"{tmp}/profiles.db")
    await store.init_schema(8)
    me = ProfileUpdater(store, lambda: None, _no_send, SETTINGS)
    other = ProfileUpdater(store, lambda: None, _no_send, SETTINGS)
    me.own_partitions([0])
    await me.process([event(1)])
    me.drop_partitions([0])  # revoked: the other worker owns partition 0 now
    other.own_partitions([0])
    await me.process([event(2)])  # the envelope Faust still handed over after the revocation
    await other.process([event(2), event(3), event(4)])
    other.drop_partitions([0])
    me.own_partitions([0])  # the partition comes back
    await me.process([event(5)])
    final = (await store.load_states(["p1"]))["p1"]
    await store.close()
    return [e.event_id for e in final.events]


def test_a_record_after_the_revocation_does_not_leave_a_stale_cache_behind(tmp_path: Any) -> None:
    assert asyncio.run(_returning_partition(str(tmp_path))) == ["e1", "e2", "e3", "e4", "e5"]


def test_owned_partitions_are_cached_and_an_assignment_drops_the_others(tmp_path: Any) -> None:
    async def go() -> tuple[int, int]:
        store = SqliteStore(f"{tmp_path}/profiles.db")
        await store.init_schema(8)
        updater = ProfileUpdater(store, lambda: None, _no_send, Settings(person_partitions=1))
        updater.own_partitions([0])
        await updater.process([event(1)])
        cached = updater.cached_people()
        updater.own_partitions([])  # a new assignment without partition 0
        dropped = updater.cached_people()
        await store.close()
        return cached, dropped

    assert asyncio.run(go()) == (1, 0)
