"""Small models and event sequences the tests and benches train on (seconds, on the CPU).

The synthetic data has a learnable structure (each person walks through the
items of one "genre" in order), so tests can assert that training learns
something, not just that it runs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from schemas.sequence import SeqEvent

T0_MS = 1_700_000_000_000


def synthetic_events(
    people: int = 80, seed: int = 0, genres: int = 6, per_genre: int = 12
) -> list[dict[str, Any]]:
    """Canonical event dicts: person p walks genre g's items in order, with some noise."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for p in range(people):
        genre = p % genres
        start = rng.randrange(per_genre)
        ts = T0_MS + rng.randrange(10**9)
        for step in range(rng.randint(5, 14)):
            ts += rng.choice([2_000, 60_000, 3_600_000, 90_000_000])
            k = (start + step) % per_genre if rng.random() > 0.1 else rng.randrange(per_genre)
            events.append(
                {
                    "user_id": f"u{p}",
                    "item_id": f"g{genre}-i{k}",
                    "ts_ms": ts,
                    "action": rng.choice(["click", "click", "browse", "purchase"]),
                    "platform": rng.choice(["web", "app", "tv"]),
                }
            )
    return events


def platform_events(
    people: int = 90, seed: int = 0, genres: int = 6, per_genre: int = 10, platform: str = "tv"
) -> list[dict[str, Any]]:
    """Two platforms with their own catalogues and tastes: web walks genre g, ``platform`` genre g+1.

    Person p shops genre ``p % genres`` on the web (items ``g<g>-i<k>``) but watches genre
    ``(p + 1) % genres`` on ``platform`` (items ``<platform>-g<g>-i<k>``), each in order: a shared model
    must split its attention between the two, a platform model can learn the platform's own walk.
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for p in range(people):
        ts = T0_MS + rng.randrange(10**9)
        cursor = {"web": rng.randrange(per_genre), platform: rng.randrange(per_genre)}
        for _ in range(rng.randint(10, 20)):
            ts += rng.choice([2_000, 60_000, 3_600_000])
            where = platform if rng.random() < 0.5 else "web"
            genre = p % genres if where == "web" else (p + 1) % genres
            k = cursor[where] % per_genre if rng.random() > 0.1 else rng.randrange(per_genre)
            cursor[where] += 1
            prefix = "" if where == "web" else f"{platform}-"
            events.append({"user_id": f"u{p}", "item_id": f"{prefix}g{genre}-i{k}", "ts_ms": ts,
                           "action": rng.choice(["click", "browse", "purchase"]), "platform": where})
    return events


def make_sequences(count: int, seed: int = 0, max_events: int = 30) -> list[list[SeqEvent]]:
    """Random-length SeqEvent sequences (including empty ones) for runtime/feature tests."""
    rng = random.Random(seed)
    out = []
    for b in range(count):
        ts = T0_MS
        seq = []
        for i in range(rng.randint(0, max_events)):
            ts += rng.randint(0, 10**7)
            seq.append(
                SeqEvent(
                    f"e{b}-{i}",
                    ts,
                    f"g{rng.randrange(6)}-i{rng.randrange(12)}",
                    rng.choice(["click", "browse", "purchase", "share"]),
                    rng.choice(["web", "app", "smart-fridge"]),
                )
            )
        out.append(seq)
    return out


def model_state(model: Any) -> dict[str, Any]:
    """A model's weights as numpy copies, to compare two runs bit for bit."""
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def tiny_config(**overrides: Any) -> Any:
    from model.trainer import TrainConfig

    base: dict[str, Any] = dict(
        epochs=4,
        batch_size=16,
        max_len=12,
        width=16,
        heads=2,
        layers=1,
        dim=8,
        hash_buckets=512,
        dropout=0.1,
        lr=3e-3,
        patience=10,
        progress=False,
        threads=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def tiny_rows(seed: int = 0) -> list[dict[str, Any]]:
    """The canonical event rows ``train_tiny_model`` trains on (synthetic traffic on every platform)."""
    import time as _time

    from interest.synthetic import RawEvent, SyntheticTraffic
    from schemas.adapters import load_adapters

    traffic = SyntheticTraffic(load_adapters(), users=150, items=300, seed=5 + seed)
    start = int(_time.time() * 1000) - 10 * 86_400_000
    rows = []
    for e in traffic.events(3000, start, step_ms=60_000):
        if isinstance(e, RawEvent):
            adapter = load_adapters()[e.topic.split(".")[1]]
            item: Any = e.value
            for key in adapter.item_field:
                item = item[key]
            rows.append({"user_id": e.person_id, "item_id": str(item), "timestamp": e.ts_ms,
                         "platform": e.topic.split(".")[1], "action": e.topic.split(".")[2]})
    return rows


def train_tiny_model(root: Path, seed: int = 0) -> str:
    """Train a small model on synthetic history and publish it to ``root``; returns the version."""
    from model.trainer import TrainConfig, train

    cfg = TrainConfig(epochs=2, max_len=50, width=32, dim=64, layers=1, heads=2, seed=seed, progress=False)
    return str(train(tiny_rows(seed), root, cfg, time_unit="ms", force=True).version)


def train_tiny_platform_model(root: Path, parent: str, platform: str = "tv", seed: int = 0,
                              promote: bool = True, force: bool = True, **overrides: Any) -> str:
    """Fine-tune ``parent`` on ``platform``'s events of ``tiny_rows(seed)`` and publish the platform version."""
    from model.trainer import TrainConfig, train

    given: dict[str, Any] = dict(epochs=2, seed=seed, progress=False, threads=1)
    given.update(overrides)
    return str(train(tiny_rows(seed), root, TrainConfig(**given), from_version=parent, platform=platform,
                     time_unit="ms", force=force, promote=promote).version)
