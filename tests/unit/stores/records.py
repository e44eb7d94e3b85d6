"""Builders of test records whose content is a pure function of their write timestamp.

Why: a store may keep either of two rows that carry the same ``write_ts``
(Cassandra picks per cell), so tests only ever write equal-timestamp rows
that are identical, exactly as the worker does (``write_ts`` is derived from
the data).
"""

from __future__ import annotations

import numpy as np

from schemas.sequence import TS_SHIFT, PersonState, Profile, SeqEvent

DIM = 8


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def state(person_id: str, write_ts: int, n_events: int = 3) -> PersonState:
    events = [
        SeqEvent(
            f"{person_id}-e{write_ts}-{i}",
            (write_ts >> TS_SHIFT) + i,
            f"item-{(write_ts + i) % 97}",
            ("click", "browse", "purchase")[i % 3],
            ("web", "app")[i % 2],
            1.0 + i / 4,
        )
        for i in range(n_events)
    ]
    return PersonState(
        person_id,
        events,
        event_count=n_events + write_ts % 5,
        first_ts_ms=write_ts >> TS_SHIFT,
        last_ts_ms=(write_ts >> TS_SHIFT) + n_events - 1,
        platforms={"web": 2, "app": 1},
        write_ts=write_ts,
    )


def profile(person_id: str, model_version: str, write_ts: int, vector: np.ndarray | None = None) -> Profile:
    vec = unit(write_ts) if vector is None else vector
    return Profile(
        person_id,
        model_version,
        vec,
        event_count=3 + write_ts % 5,
        first_ts_ms=write_ts >> TS_SHIFT,
        last_ts_ms=(write_ts >> TS_SHIFT) + 2,
        platforms={"web": 2, "app": 1},
        write_ts=write_ts,
        updated_ms=1_700_000_000_000 + write_ts % 1000,
    )


def assert_state_equal(got: PersonState | None, want: PersonState) -> None:
    assert got is not None
    assert (
        got.person_id,
        got.events,
        got.event_count,
        got.first_ts_ms,
        got.last_ts_ms,
        got.platforms,
        got.write_ts,
    ) == (
        want.person_id,
        want.events,
        want.event_count,
        want.first_ts_ms,
        want.last_ts_ms,
        want.platforms,
        want.write_ts,
    )


def assert_profile_equal(got: Profile | None, want: Profile) -> None:
    assert got is not None
    assert (
        got.person_id,
        got.model_version,
        got.event_count,
        got.first_ts_ms,
        got.last_ts_ms,
        got.platforms,
        got.write_ts,
        got.updated_ms,
    ) == (
        want.person_id,
        want.model_version,
        want.event_count,
        want.first_ts_ms,
        want.last_ts_ms,
        want.platforms,
        want.write_ts,
        want.updated_ms,
    )
    assert got.vector.dtype == np.float32
    np.testing.assert_array_equal(got.vector, want.vector.astype(np.float32))
