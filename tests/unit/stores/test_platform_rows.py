"""A vector per served version: one encoder call per version per batch, one row per (person, version),
in every store backend, each version's rows queryable apart (the embedding spaces never mix)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.events import CanonicalEvent
from schemas.records import OutMessage
from schemas.sequence import SeqEvent
from streams.updater import ProfileUpdater

from .conftest import DIM, StoreEnv, make_settings

T0 = 1_700_000_000_000


class CountingEncoder:
    """A deterministic encoder that counts its calls (the updater must call it once per batch)."""

    def __init__(self, version: str, salt: int) -> None:
        self.version, self.dim, self.salt, self.calls = version, DIM, salt, 0

    def encode(self, sequences: Sequence[Sequence[SeqEvent]]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(sequences), DIM), dtype=np.float32)
        for row, seq in enumerate(sequences):
            out[row, (len(seq) + self.salt) % DIM] = 1.0
            out[row, self.salt % DIM] += 0.5
        return out / np.linalg.norm(out, axis=1, keepdims=True)


async def _no_links(_: list[OutMessage]) -> None:
    raise AssertionError("no links in this test")


def test_every_served_version_gets_a_row_per_changed_person(store_env: StoreEnv) -> None:
    shared, tv = CountingEncoder("v-shared", 0), CountingEncoder("v-tv", 3)
    served: list[CountingEncoder] = [tv]
    updater = ProfileUpdater(store_env.store, lambda: shared, _no_links, make_settings(person_partitions=1),
                             platform_encoders=lambda: served)
    people = [f"pv-{n}" for n in range(12)]
    records = [CanonicalEvent(f"{p}-e{i}", p, "tv" if i % 2 else "web", p, "click", f"i{i}", T0 + 1000 * i)
               for n, p in enumerate(people) for i in range(1 + n % 4)]
    report = store_env.run(updater.process(records))
    assert (shared.calls, tv.calls) == (1, 1), "one encoder call per served version, not per person"
    assert report.model_version == "v-shared" and report.platform_versions == ["v-tv"]
    store = store_env.store
    for version, enc in (("v-shared", shared), ("v-tv", tv)):
        assert store_env.run(store.count_profiles(version)) == len(people)
        rows = {p: store_env.run(store.get_profile(p, version)) for p in people}
        states = store_env.run(store.load_states(people))
        want = CountingEncoder(version, enc.salt).encode([states[p].events for p in people])
        for n, person in enumerate(people):
            row = rows[person]
            assert row is not None and row.model_version == version
            assert row.event_count == states[person].event_count and row.write_ts == states[person].write_ts
            assert np.allclose(row.vector, want[n], atol=1e-6)
    both = store_env.run(store.get_profiles(people[0]))
    assert sorted(r.model_version for r in both) == ["v-shared", "v-tv"]
    # Nearest people stay inside one version's space.
    probe = store_env.run(store.get_profile(people[3], "v-tv"))
    assert probe is not None
    found = store_env.run(store.nearest_people(probe.vector, "v-tv", 3, exclude=[people[3]]))
    assert found and all(store_env.run(store.get_profile(p, "v-tv")) is not None for p, _ in found)

    # No platform served (the default): exactly one row per person, as before.
    served.clear()
    more = [CanonicalEvent(f"{people[0]}-late", people[0], "tv", people[0], "click", "i9", T0 + 99_000)]
    store_env.run(updater.process(more))
    assert (shared.calls, tv.calls) == (2, 1)
    after = {r.model_version: r for r in store_env.run(store.get_profiles(people[0]))}
    assert after["v-shared"].event_count == after["v-tv"].event_count + 1  # tv's row kept its older state
