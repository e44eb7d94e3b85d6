"""The store compared with the oracle: what a fault or redeploy test asserts on.

``testkit/oracle.py`` says what every profile must be from the produced events
alone; this module scans a store and counts, person by person, what differs.
Shared by ``tests/integration/test_rolling_redeploy.py`` and ``python -m bench.rolling``, so
the CI test and the benchmark judge a run the same way.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.sequence import PersonState
from schemas.settings import Settings
from streams.stores.base import state_pages
from streams.stores.factory import opened_store
from testkit.chaos import window_problems
from testkit.helpers import wait_until
from testkit.oracle import Expected


@dataclass
class Comparison:
    """The store against the oracle; every field is a count."""

    people: int = 0
    matched: int = 0
    lost: int = 0  # people with a missing profile or missing events
    mismatched: int = 0  # people whose row differs from one clean pass (includes the lost)
    extra: int = 0  # stored people the oracle does not know (e.g. an unmerged anonymous id)
    events_expected: int = 0
    events_stored: int = 0
    duplicates_applied: int = 0  # events counted twice, or an event id twice in a sequence
    stale_vectors: int = 0  # vector differs from encoding the stored sequence
    examples: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def _runtime(registry: str, version: str) -> Any:
    """The encoder, loaded once: the caught-up wait compares every second."""
    from model.runtime import EncoderRuntime

    return EncoderRuntime.load(registry, version, use_gpu="no")


async def _compare(settings: Settings, version: str, oracle: dict[str, Expected]) -> Comparison:
    async with opened_store(settings) as store:
        states: dict[str, PersonState] = {s.person_id: s async for page in state_pages(store) for s in page}
        people = set(states) | set(oracle)
        rows = dict(zip(people, await asyncio.gather(*(store.get_profile(p, version) for p in people)),
                        strict=True))
    out = Comparison(people=len(oracle), events_expected=sum(e.count for e in oracle.values()))
    out.extra = sum(1 for p in people - set(oracle) if rows[p] is not None or p in states)
    present = [p for p in oracle if rows[p] is not None and p in states]
    runtime = _runtime(settings.registry, version)
    vectors = runtime.encode([states[p].events for p in present]) if present else np.zeros((0, runtime.dim))
    fresh = dict(zip(present, vectors, strict=True))
    for person, exp in oracle.items():
        row, state = rows[person], states.get(person)
        if row is None or state is None:
            out.lost += 1
            out.mismatched += 1
            out.examples.append(f"{person}: no profile")
            continue
        ids = [e.event_id for e in state.events]
        repeated = len(ids) - len(set(ids))
        out.events_stored += row.event_count
        out.duplicates_applied += max(0, row.event_count - exp.count) + repeated
        stale = not np.allclose(row.vector, fresh[person], atol=1e-4)
        out.stale_vectors += stale
        out.lost += not set(exp.window(settings.seq_len)) <= set(ids)
        problems = window_problems(row, state, exp, settings.seq_len) + (["vector"] if stale else [])
        if problems:
            out.mismatched += 1
            if len(out.examples) < 10:
                out.examples.append(f"{person}: {', '.join(problems)} (stored {row.event_count}, want {exp.count})")
        else:
            out.matched += 1
    return out


def compare(settings: Settings, version: str, oracle: dict[str, Expected]) -> Comparison:
    """Scan the store and check every person against the oracle (see ``Comparison``)."""
    return asyncio.run(_compare(settings, version, oracle))


def wait_until_caught_up(settings: Settings, version: str, oracle: dict[str, Expected], timeout: float) -> bool:
    """Wait until every person matches the oracle (False on timeout: compare says why).

    Matching is exact on the kept window and bounded on the counts
    (``testkit.chaos.window_problems``): once a window has evicted, an event that
    arrives older than it is dropped uncounted, so the counts alone cannot say.
    """

    def done() -> bool:
        got = compare(settings, version, oracle)
        return got.matched == got.people and got.lost == 0 and got.extra == 0

    try:
        wait_until(done, timeout, interval=1.0, what="store caught up with the oracle")
        return True
    except AssertionError:
        return False
