"""Several interests per person: clusters of the person's own item vectors.

What a user relies on: a person with two distinct tastes gets two interests
whose representative items come from each taste and whose weights follow the
events; a person with one taste gets one interest, not k pieces of it; the
diverse ranking gives each interest slots by weight without repeating items.
"""

from __future__ import annotations

import zlib

import numpy as np

from model.interests import mix_ranked, person_interests
from schemas.sequence import SeqEvent

DIM = 16
GROUPS = {"A": np.eye(DIM)[0], "B": np.eye(DIM)[1]}


def item_vectors(ids: list[str]) -> np.ndarray:
    out = []
    for item in ids:
        rng = np.random.default_rng(zlib.crc32(item.encode()))
        out.append(GROUPS[item[0]] + 0.2 * rng.normal(size=DIM))
    return np.stack(out)


def events(items: list[str]) -> list[SeqEvent]:
    return [SeqEvent(f"e{n}", 1_000 + n, item, "click", "web", 1.0) for n, item in enumerate(items)]


def test_two_tastes_give_two_interests_with_their_own_items() -> None:
    seq = events([f"{'A' if n % 3 else 'B'}-{n % 5}" for n in range(30)])
    (interests,) = person_interests(item_vectors, [seq], k=3)
    assert len(interests) == 2
    assert {it.items[0][0] for it in interests} == {"A", "B"}
    assert all(len({i[0] for i in it.items}) == 1 for it in interests)  # no interest mixes tastes
    heavy = interests[0]
    assert heavy.items[0].startswith("A") and 0.55 < heavy.weight < 0.85  # two thirds of the events are A
    assert abs(sum(it.weight for it in interests) - 1.0) < 1e-6


def test_one_taste_gives_one_interest_and_batches_do_not_mix() -> None:
    one = events([f"A-{n % 5}" for n in range(30)])
    two = events([f"{'A' if n % 2 else 'B'}-{n % 4}" for n in range(20)])
    got = person_interests(item_vectors, [one, two, []], k=3)
    assert len(got[0]) == 1 and got[0][0].weight == 1.0
    assert len(got[1]) == 2
    assert got[2] == ()
    assert [i.items for i in got[0]] == [i.items for i in person_interests(item_vectors, [one], k=3)[0]]


def test_an_interest_names_distinct_items_past_a_run_of_repeats() -> None:
    """The closest members are forty clicks on one item: the other items come from further down the ranking."""
    seq = events(["A-1", "A-2", *["A-0"] * 40])
    (interests,) = person_interests(item_vectors, [seq], k=3, items_per_interest=3)
    assert len(interests) == 1
    assert interests[0].items[0] == "A-0" and sorted(interests[0].items) == ["A-0", "A-1", "A-2"]


def test_mix_ranked_shares_slots_by_weight_without_repeats() -> None:
    a = [(f"a{n}", 1.0 - n / 100) for n in range(10)] + [("both", 0.5)]
    b = [("both", 0.99)] + [(f"b{n}", 0.9 - n / 100) for n in range(10)]
    mixed = mix_ranked([a, b], [0.7, 0.3], 10)
    assert len(mixed) == 10 and len({i for i, _, _ in mixed}) == 10
    by_interest = [sum(1 for _, _, n in mixed if n == k) for k in (0, 1)]
    assert by_interest == [7, 3]
    assert mixed[0][0] == "a0" and mixed[1][0] == "both"


def test_diverse_ranking_keeps_the_vectors_order_within_each_interest_and_shares_slots() -> None:
    from model.interests import diverse_ranking

    ids = [f"A-{n}" for n in range(20)] + [f"B-{n}" for n in range(20)]
    matrix = item_vectors(ids)
    two = person_interests(item_vectors, [events([f"{'A' if n % 3 else 'B'}-{n % 5}" for n in range(30)])], k=3)[0]
    vector = np.eye(DIM)[0] * 1.0 + 0.3 * np.eye(DIM)[1]  # the encoder leans to A: a plain top 10 is all A
    plain = np.argsort(-(matrix @ vector))[:10]
    assert all(ids[i].startswith("A") for i in plain)
    exclude = np.zeros(len(ids), dtype=bool)
    exclude[ids.index("A-0")] = True
    mixed = diverse_ranking(vector, two, matrix, exclude, 10)
    got = [ids[i] for i, _, _ in mixed]
    assert len(got) == 10 and len(set(got)) == 10 and "A-0" not in got
    light = next(i.weight for i in two if i.items[0].startswith("B"))
    assert 0.15 < light < 0.5
    assert sum(g.startswith("B") for g in got) in {int(10 * light), int(10 * light) + 1}, "slots follow weights"
    for taste in "AB":  # within an interest the order is the person vector's order
        scores = [s for (i, s, _) in mixed if ids[i].startswith(taste)]
        assert scores == sorted(scores, reverse=True)
    assert [ids[i] for i, _, _ in diverse_ranking(vector, (), matrix, exclude, 5)] == [
        ids[i] for i in np.argsort(-(matrix @ vector)) if ids[i] != "A-0"][:5]


def test_encode_with_interests_is_what_worker_and_reencode_write() -> None:
    from model.interests import encode_with_interests

    class Encoder:  # the encoder slice: vectors from encode, item vectors from the index
        spec = type("Spec", (), {"max_len": 12})()

        def encode(self, sequences: list[list[SeqEvent]]) -> np.ndarray:
            return np.ones((len(sequences), DIM), dtype=np.float32)

        def item_vectors(self, ids: list[str]) -> np.ndarray:
            return item_vectors(ids)

    seqs = [events([f"B-{n % 4}" for n in range(20)] + [f"A-{n % 4}" for n in range(12)])]
    vectors, interests = encode_with_interests(Encoder(), seqs, k=3, seq_len=50)
    assert vectors.shape == (1, DIM)
    # the interests see the encoder's window (the last 12 events, all A), not the 32 stored ones
    window = person_interests(item_vectors, [seqs[0][-12:]], k=3)
    assert [(i.items, i.weight) for i in interests[0]] == [(i.items, i.weight) for i in window[0]]
    assert len(interests[0]) == 1 and interests[0][0].items[0].startswith("A")
    assert encode_with_interests(Encoder(), seqs, k=0, seq_len=50)[1] == [()]
