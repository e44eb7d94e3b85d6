"""Out of order and late: an older event never overwrites a newer state.

What a user relies on: one person's events come from several platforms,
through different topics and partitions, so they arrive in any order and
some arrive late.  The profile must end up the same as if they had arrived
in event-time order.  The property test drives the real updater and the
real SQLite store over arbitrary arrival orders, batch splits, cache losses
(a partition moving to another worker) and a stale writer; the end-to-end
test sends a real person's events backwards through the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from interest.produce import produce_events
from interest.synthetic import RawEvent
from schemas.events import CanonicalEvent
from schemas.sequence import PersonState
from schemas.settings import Settings
from streams.stores.base import StoreBatch
from streams.stores.sqlite import SqliteStore
from streams.updater import ProfileUpdater
from testkit.chaos import SOAK, report, synthetic, wait_for_oracle
from testkit.helpers import WorkerProcess

PLATFORMS = ["web", "app", "mini", "tv"]
EVENTS = [
    {"event_id": f"e{i:02d}", "person_id": "p1", "platform": PLATFORMS[i % 4], "platform_user_id": "p1",
     "action": "click", "item_id": f"i{i % 5}", "ts_ms": 1_700_000_000_000 + 1000 * i, "weight": 1.0}
    for i in range(14)
]


async def _apply(order: list[int], cuts: set[int], cold: list[bool], max_len: int) -> tuple[PersonState, int]:
    store = SqliteStore(":memory:")
    await store.init_schema(8)

    async def send(_: Any) -> None:
        raise AssertionError("no links here")

    updater = ProfileUpdater(store, lambda: None, send, Settings(person_partitions=1, seq_len=max_len))
    records = [CanonicalEvent.from_dict(EVENTS[i]) for i in order]
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(records)), len(records)]
    first: PersonState | None = None
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        await updater.process(records[lo:hi])
        if n < len(cold) and cold[n]:
            updater.drop_partitions([0])  # the partition moved: the next batch reads the store
        if first is None:
            first = (await store.load_states(["p1"]))["p1"]
    assert first is not None
    await store.write_batch(StoreBatch(states=[first]))  # a stale writer (zombie owner) writes its old state
    final = (await store.load_states(["p1"]))["p1"]
    await store.close()
    return final, first.write_ts


@settings(max_examples=1000 if SOAK else 60, deadline=None)
@given(
    order=st.permutations(range(len(EVENTS))),
    cuts=st.sets(st.integers(1, len(EVENTS) - 1), max_size=6),
    cold=st.lists(st.booleans(), max_size=7),
    max_len=st.sampled_from([5, 50]),
)
def test_any_arrival_order_gives_the_event_time_state(
    order: list[int], cuts: set[int], cold: list[bool], max_len: int
) -> None:
    final, stale_ts = asyncio.run(_apply(order, cuts, cold, max_len))
    newest = sorted(EVENTS, key=lambda e: (e["ts_ms"], e["event_id"]))[-max_len:]
    # ``final`` was read after the stale writer wrote: its window is still the newest of all events.
    assert [e.event_id for e in final.events] == [e["event_id"] for e in newest]
    assert final.last_ts_ms == EVENTS[-1]["ts_ms"]
    if max_len >= len(EVENTS):  # nothing can be too late: the counters are exact
        assert final.event_count == len(EVENTS) and final.first_ts_ms == EVENTS[0]["ts_ms"]
        assert set(final.platforms) == set(PLATFORMS)
    else:
        assert max_len <= final.event_count <= len(EVENTS)


async def _state_of(records: list[CanonicalEvent], max_len: int, cuts: set[int]) -> PersonState:
    """The state one worker reaches from ``records`` in this arrival order (its own cache, its own store)."""
    store = SqliteStore(":memory:")
    await store.init_schema(8)

    async def send(_: Any) -> None:
        raise AssertionError("no links here")

    updater = ProfileUpdater(store, lambda: None, send, Settings(person_partitions=1, seq_len=max_len))
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(records)), len(records)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        await updater.process(records[lo:hi])
    state = (await store.load_states(["p1"]))["p1"]
    await store.close()
    return state


@settings(max_examples=400 if SOAK else 80, deadline=None)
@given(
    big_order=st.permutations(range(len(EVENTS))),
    small=st.sets(st.integers(0, len(EVENTS) - 1), min_size=1),
    small_order_seed=st.randoms(use_true_random=False),
    cuts=st.sets(st.integers(1, len(EVENTS) - 1), max_size=4),
    max_len=st.sampled_from([5, 50]),
)
def test_a_state_with_more_events_wins_whatever_either_arrival_order(
    big_order: list[int], small: set[int], small_order_seed: Any, cuts: set[int], max_len: int
) -> None:
    """Zombie writer: worker A stalled holding a subset of the events; worker B, the new owner, has them all.

    Each saw its events in its own order.  Written to one store in either order,
    the store must keep B's state; the same events in another order give the
    same write timestamp.
    """
    small_order = sorted(small)
    small_order_seed.shuffle(small_order)
    every = [CanonicalEvent.from_dict(EVENTS[i]) for i in big_order]
    some = [CanonicalEvent.from_dict(EVENTS[i]) for i in small_order]

    async def run() -> tuple[PersonState, PersonState, PersonState, PersonState, PersonState]:
        new_owner, zombie = await _state_of(every, max_len, cuts), await _state_of(some, max_len, set())
        again = await _state_of(list(reversed(every)), max_len, set())
        stored = []
        for first, second in ((new_owner, zombie), (zombie, new_owner)):
            store = SqliteStore(":memory:")
            await store.init_schema(8)
            await store.write_batch(StoreBatch(states=[first]))
            await store.write_batch(StoreBatch(states=[second]))
            stored.append((await store.load_states(["p1"]))["p1"])
            await store.close()
        return new_owner, zombie, again, stored[0], stored[1]

    new_owner, zombie, again, zombie_last, owner_last = asyncio.run(run())
    assert again.write_ts == new_owner.write_ts and again.events == new_owner.events, "arrival order changed the state"
    if zombie.events != new_owner.events:
        assert new_owner.write_ts > zombie.write_ts, "the state holding every event did not compare larger"
    for kept in (zombie_last, owner_last):
        assert kept.events == new_owner.events, "the zombie's state overwrote the one with every event"


def test_backwards_across_platforms_and_partitions_end_to_end(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    settings_ = chaos_settings()
    traffic = synthetic(users=4, events=160, seed=53)
    raw = sorted((p for p in traffic.produced if isinstance(p, RawEvent)), key=lambda e: -e.ts_ms)
    links = [p for p in traffic.produced if not isinstance(p, RawEvent)]
    newer, older = raw[: len(raw) // 2], raw[len(raw) // 2:]
    topics = {e.topic for e in raw}
    with WorkerProcess(settings_, tmp_path, name="order"):
        produce_events(settings_, links + newer)  # newest first, newest half first
        wait_for_oracle(settings_, version, synthetic_oracle(links + newer))
        produce_events(settings_, older)  # then the late half, also backwards
        wait_for_oracle(settings_, version, traffic.oracle)
    report("out of order and late", events=len(raw), late_events=len(older), topics=len(topics),
           people=len(traffic.oracle), order="descending event time, newest half first")


def synthetic_oracle(produced: list[Any]) -> Any:
    from testkit.oracle import expected_profiles

    return expected_profiles(produced)
