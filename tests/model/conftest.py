"""Fixtures for the model package: synthetic events and one tiny published model.

The synthetic data has a learnable structure (each person walks through the
items of one "genre" in order), so tests can assert that training learns
something, not just that it runs.  The published registry is built once per
session (a few seconds) and copied where a test needs to damage it.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture(scope="session")
def events() -> list[dict[str, Any]]:
    return synthetic_events()


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]]) -> tuple[Path, Any]:
    """A registry with one trained, promoted tiny version: (root, TrainResult)."""
    from model.trainer import train

    root = tmp_path_factory.mktemp("registry")
    result = train(events, root, tiny_config(), time_unit="ms")
    return root, result


@pytest.fixture
def registry_copy(published: tuple[Path, Any], tmp_path: Path) -> Callable[[], tuple[Path, str]]:
    """A private copy of the published registry that a test may damage."""

    def make() -> tuple[Path, str]:
        root = tmp_path / "registry"
        shutil.copytree(published[0], root)
        return root, published[1].version

    return make
