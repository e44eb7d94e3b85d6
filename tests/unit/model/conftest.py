"""Fixtures for the model package: synthetic events and one tiny published model.

The synthetic data has a learnable structure (each person walks through the
items of one "genre" in order), so tests can assert that training learns
something, not just that it runs.  The published registry is built once per
session (a few seconds) and copied where a test needs to damage it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.models import T0_MS, make_sequences, synthetic_events, tiny_config  # noqa: F401


@pytest.fixture(scope="session")
def events() -> list[dict[str, Any]]:
    return synthetic_events()


@pytest.fixture(scope="session")
def people(events: list[dict[str, Any]]) -> Any:
    """The synthetic events as loaded sequences (what ``train_model`` takes)."""
    from model.data import load_events

    return load_events(events, "ms")


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
