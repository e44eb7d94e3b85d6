"""The ``ProfileStore`` contract, run unchanged against every backend (see conftest ``store_env``)."""

from __future__ import annotations

import random
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.sequence import IdentityLinkRecord
from streams.stores.base import StoreBatch, StoreUnavailable

from .conftest import StoreEnv
from .records import assert_profile_equal, assert_state_equal, profile, state, unit

US = 1 << 20  # write-timestamp units per event millisecond (schemas.sequence.TS_SHIFT)


def pid() -> str:
    return f"person-{uuid.uuid4().hex[:10]}"


def test_upsert_and_read_by_person_and_version(store_env: StoreEnv) -> None:
    store, alice, bob = store_env.store, pid(), pid()
    batch = StoreBatch(
        states=[state(alice, 5_000), state(bob, 7_000)],
        profiles=[profile(alice, "v1", 5_000), profile(bob, "v1", 7_000)],
    )
    store_env.run(store.write_batch(batch))

    states = store_env.run(store.load_states([alice, bob, "nobody"]))
    assert set(states) == {alice, bob}
    assert_state_equal(states[alice], state(alice, 5_000))
    assert_profile_equal(store_env.run(store.get_profile(bob, "v1")), profile(bob, "v1", 7_000))
    assert store_env.run(store.get_profile(bob, "v2")) is None
    assert store_env.run(store.get_profile("nobody", "v1")) is None
    assert store_env.run(store.count_states()) == 2
    assert store_env.run(store.count_profiles("v1")) == 2


def test_versions_coexist_newest_first(store_env: StoreEnv) -> None:
    store, alice = store_env.store, pid()
    store_env.run(store.write_batch(StoreBatch(profiles=[profile(alice, "v1", 5_000)])))
    store_env.run(store.write_batch(StoreBatch(profiles=[profile(alice, "v2", 9_000)])))
    rows = store_env.run(store.get_profiles(alice))
    assert [p.model_version for p in rows] == ["v2", "v1"]
    assert_profile_equal(rows[1], profile(alice, "v1", 5_000))
    assert store_env.run(store.count_profiles("v1")) == 1
    assert store_env.run(store.count_profiles("v2")) == 1


def test_replay_gives_identical_rows(store_env: StoreEnv) -> None:
    store, people = store_env.store, [pid() for _ in range(20)]
    batch = StoreBatch(
        states=[state(p, 1_000 + i) for i, p in enumerate(people)],
        profiles=[profile(p, "v1", 1_000 + i) for i, p in enumerate(people)],
        links=[IdentityLinkRecord(f"anon:web:{p}", p, 3) for p in people],
    )
    store_env.run(store.write_batch(batch))
    first = store_env.run(store.load_states(people)), [store_env.run(store.get_profiles(p)) for p in people]
    store_env.run(store.write_batch(batch))
    second = store_env.run(store.load_states(people)), [store_env.run(store.get_profiles(p)) for p in people]
    for p in people:
        assert_state_equal(second[0][p], first[0][p])
    for before, after in zip(first[1], second[1], strict=True):
        assert len(before) == len(after) == 1
        assert_profile_equal(after[0], before[0])
    assert store_env.run(store.count_states()) == 20


def test_older_write_never_overwrites_newer_state(store_env: StoreEnv) -> None:
    store, alice = store_env.store, pid()
    store_env.run(
        store.write_batch(StoreBatch(states=[state(alice, 9_000)], profiles=[profile(alice, "v1", 9_000)]))
    )
    store_env.run(
        store.write_batch(StoreBatch(states=[state(alice, 4_000)], profiles=[profile(alice, "v1", 4_000)]))
    )
    assert_state_equal(store_env.run(store.load_states([alice]))[alice], state(alice, 9_000))
    assert_profile_equal(store_env.run(store.get_profile(alice, "v1")), profile(alice, "v1", 9_000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stamps=st.lists(st.integers(1, 40), min_size=1, max_size=7),
    delete_at=st.one_of(st.none(), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
)
def test_last_write_wins_under_any_order(
    store_env: StoreEnv, stamps: list[int], delete_at: int | None, seed: int
) -> None:
    """Any permutation and batching of writes (and one removal) ends in the same rows."""
    store, who = store_env.store, pid()
    ops: list[StoreBatch] = [
        StoreBatch(states=[state(who, ts)], profiles=[profile(who, "v1", ts)]) for ts in stamps
    ]
    if delete_at is not None:
        ops.append(StoreBatch(removed_states=[(who, delete_at)]))
    rnd = random.Random(seed)
    rnd.shuffle(ops)
    while ops:  # random batching: several writes of one person may share a batch
        size = rnd.randint(1, 3)
        take, ops = ops[:size], ops[size:]
        merged = StoreBatch()
        for op in take:
            merged.states += op.states
            merged.profiles += op.profiles
            merged.removed_states += op.removed_states
        store_env.run(store.write_batch(merged))
    newest = max(stamps)
    states = store_env.run(store.load_states([who]))
    if delete_at is not None and delete_at >= newest:
        assert states == {}
        assert store_env.run(store.get_profile(who, "v1")) is None
    else:
        assert_state_equal(states[who], state(who, newest))
        assert_profile_equal(store_env.run(store.get_profile(who, "v1")), profile(who, "v1", newest))


def test_nearest_people(store_env: StoreEnv) -> None:
    store, people = store_env.store, [pid() for _ in range(30)]
    vectors = {p: unit(i + 100) for i, p in enumerate(people)}
    store_env.run(
        store.write_batch(StoreBatch(profiles=[profile(p, "v1", 1_000, vectors[p]) for p in people]))
    )
    # another embedding space must never leak into v1 answers
    store_env.run(
        store.write_batch(StoreBatch(profiles=[profile(pid(), "v2", 1_000, unit(7)) for _ in range(5)]))
    )
    query = vectors[people[3]]
    scores = sorted(((p, float(np.dot(v, query))) for p, v in vectors.items()), key=lambda s: -s[1])

    got = store_env.run(store.nearest_people(query, "v1", 5))
    assert [p for p, _ in got] == [p for p, _ in scores[:5]]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in scores[:5]], atol=1e-5)
    assert got[0][0] == people[3] and abs(got[0][1] - 1.0) < 1e-5

    excluded = store_env.run(store.nearest_people(query, "v1", 3, exclude=[people[3]]))
    assert [p for p, _ in excluded] == [p for p, _ in scores[1:4]]
    assert store_env.run(store.nearest_people(query, "v3", 3)) == []


def test_iter_states_pages_cover_everything_once(store_env: StoreEnv) -> None:
    store, people = store_env.store, sorted(pid() for _ in range(23))
    store_env.run(store.write_batch(StoreBatch(states=[state(p, 2_000) for p in people])))
    seen: list[str] = []
    after: str | None = None
    while True:
        page = store_env.run(store.iter_states(after, 5))
        assert len(page) <= 5
        if not page:
            break
        seen += [s.person_id for s in page]
        after = page[-1].person_id
    assert sorted(seen) == people and len(seen) == len(set(seen))
    if store_env.backend == "sqlite":
        assert seen == people  # SQLite pages by person id; Cassandra by token(person_id)
    assert_state_equal(store_env.run(store.iter_states(None, 100))[0], state(seen[0], 2_000))


def test_identity_links(store_env: StoreEnv) -> None:
    store, alice, bob = store_env.store, pid(), pid()
    links = [IdentityLinkRecord("anon:web:d-1", alice, 10), IdentityLinkRecord("anon:app:d-2", alice, 11)]
    store_env.run(store.write_batch(StoreBatch(links=links)))
    assert store_env.run(store.resolve_links(["anon:web:d-1", "anon:app:d-2", "anon:tv:x"])) == {
        "anon:web:d-1": alice,
        "anon:app:d-2": alice,
    }
    # a newer link moves the device; an older replay does not move it back
    store_env.run(store.write_batch(StoreBatch(links=[IdentityLinkRecord("anon:web:d-1", bob, 20)])))
    store_env.run(store.write_batch(StoreBatch(links=[IdentityLinkRecord("anon:web:d-1", alice, 10)])))
    assert store_env.run(store.resolve_links(["anon:web:d-1"])) == {"anon:web:d-1": bob}


def test_removed_states_cannot_be_resurrected(store_env: StoreEnv) -> None:
    store, anon, known = store_env.store, f"anon:web:{pid()}", pid()
    store_env.run(
        store.write_batch(StoreBatch(states=[state(anon, 5_000)], profiles=[profile(anon, "v1", 5_000)]))
    )
    merge = StoreBatch(
        states=[state(known, 8_000)],
        removed_states=[(anon, 6_000)],
        links=[IdentityLinkRecord(anon, known, 6)],
    )
    store_env.run(store.write_batch(merge))
    assert store_env.run(store.load_states([anon])) == {}
    assert store_env.run(store.get_profiles(anon)) == []
    # a replay of the anonymous person's old write must stay deleted
    store_env.run(
        store.write_batch(StoreBatch(states=[state(anon, 5_500)], profiles=[profile(anon, "v1", 5_000)]))
    )
    assert store_env.run(store.load_states([anon])) == {}
    assert store_env.run(store.get_profiles(anon)) == []
    # ...but genuinely newer activity of that id is kept
    store_env.run(store.write_batch(StoreBatch(states=[state(anon, 7_000)])))
    assert_state_equal(store_env.run(store.load_states([anon]))[anon], state(anon, 7_000))


def test_forget_removes_everything_and_records_a_marker(store_env: StoreEnv) -> None:
    store, alice, bob = store_env.store, pid(), pid()
    erased_ms = 50
    store_env.run(
        store.write_batch(
            StoreBatch(
                states=[state(alice, 40 * US), state(bob, 40 * US)],
                profiles=[
                    profile(alice, "v1", 40 * US),
                    profile(alice, "v2", 45 * US),
                    profile(bob, "v1", 40 * US),
                ],
                links=[
                    IdentityLinkRecord("anon:web:a1", alice, 30),
                    IdentityLinkRecord("anon:app:a2", alice, 31),
                    IdentityLinkRecord("anon:web:b1", bob, 30),
                ],
            )
        )
    )
    receipt = store_env.run(store.forget(alice, erased_ms))
    assert (receipt.person_id, receipt.erased_ms) == (alice, erased_ms)
    assert (receipt.profiles_deleted, receipt.sequence_deleted, receipt.links_deleted) == (2, True, 2)

    assert store_env.run(store.get_profiles(alice)) == []
    assert store_env.run(store.load_states([alice])) == {}
    assert store_env.run(store.resolve_links(["anon:web:a1", "anon:app:a2", "anon:web:b1"])) == {
        "anon:web:b1": bob
    }
    markers = store_env.run(store.load_erasures([alice, bob]))
    assert list(markers) == [alice] and markers[alice].erased_ms == erased_ms
    assert_state_equal(store_env.run(store.load_states([bob]))[bob], state(bob, 40 * US))  # others untouched

    # replayed pre-erasure data cannot come back; post-erasure activity can
    replayed = StoreBatch(
        states=[state(alice, 45 * US)],
        profiles=[profile(alice, "v1", 40 * US)],
        links=[IdentityLinkRecord("anon:web:a1", alice, 30)],
    )
    if store_env.backend == "sqlite":  # checked inside the write transaction: refused, the worker rebuilds
        with pytest.raises(StoreUnavailable, match="erased"):
            store_env.run(store.write_batch(replayed))
    else:  # shadowed by the erasure's tombstone
        store_env.run(store.write_batch(replayed))
    assert store_env.run(store.load_states([alice])) == {}
    assert store_env.run(store.resolve_links(["anon:web:a1"])) == {}
    store_env.run(store.write_batch(StoreBatch(states=[state(alice, 60 * US)])))
    assert_state_equal(store_env.run(store.load_states([alice]))[alice], state(alice, 60 * US))

    # A forget erases everything stored, also rows newer than the time it was asked with (a clock behind
    # the events, events dated ahead of it): the receipt names the time it covered.
    again = store_env.run(store.forget(alice, 10))
    assert (again.sequence_deleted, again.erased_ms) == (True, 62)
    assert store_env.run(store.load_states([alice])) == {}


def test_many_people_in_one_batch(store_env: StoreEnv) -> None:
    store, people = store_env.store, [pid() for _ in range(300)]
    batch = StoreBatch(
        states=[state(p, 3_000) for p in people], profiles=[profile(p, "v1", 3_000) for p in people]
    )
    store_env.run(store.write_batch(batch))
    loaded = store_env.run(store.load_states(people + people[:10]))
    assert len(loaded) == 300
    assert store_env.run(store.count_profiles("v1")) == 300


def test_interests_are_stored_read_and_replaced_with_their_profile(store_env: StoreEnv) -> None:
    """Interests travel with the profile row: same version key, same timestamp, replaced together."""
    from schemas.sequence import Interest

    store, alice = store_env.store, pid()
    first = (Interest(unit(11), 0.7, ("item-1", "item-2")), Interest(unit(12), 0.3, ("item-9",)))
    older = profile(alice, "v1", 5_000)
    older.interests = first
    store_env.run(store.write_batch(StoreBatch(profiles=[older])))
    got = store_env.run(store.get_profile(alice, "v1"))
    assert got is not None and [(i.weight, i.items) for i in got.interests] == [(0.7, ("item-1", "item-2")),
                                                                              (0.3, ("item-9",))]
    assert np.allclose(got.interests[0].vector, unit(11)) and np.allclose(got.interests[1].vector, unit(12))
    newer = profile(alice, "v1", 9_000)
    newer.interests = (Interest(unit(13), 1.0, ("item-5",)),)
    store_env.run(store.write_batch(StoreBatch(profiles=[newer])))
    store_env.run(store.write_batch(StoreBatch(profiles=[older])))  # a replay of the older row changes nothing
    rows = store_env.run(store.get_profiles(alice))
    assert [(i.weight, i.items) for i in rows[0].interests] == [(1.0, ("item-5",))]
    plain = profile(alice, "v2", 9_000)  # a row written without interests reads as none
    store_env.run(store.write_batch(StoreBatch(profiles=[plain])))
    got2 = store_env.run(store.get_profile(alice, "v2"))
    assert got2 is not None and got2.interests == ()
