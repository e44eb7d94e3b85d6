"""Shared fixtures: the real embedded Kafka broker and per-test settings.

One Tansu broker serves the whole session; each test gets its own topic
names and consumer group, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interest.embedded import EmbeddedBroker
from schemas.settings import Settings
from testkit.models import train_tiny_model

pytest_plugins = ["testkit.cqlserver.fixtures"]

for _key in [k for k in os.environ if k.startswith("INTEREST_") and not k.startswith("INTEREST_TEST_")]:
    del os.environ[_key]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_file=log) as b:
        yield b


@pytest.fixture
def make_settings(tmp_path: Path, broker: EmbeddedBroker) -> Callable[..., Settings]:
    """Settings isolated per test: own topics, group, store file and registry."""

    def build(**overrides: Any) -> Settings:
        tid = "t" + uuid.uuid4().hex[:8]
        platforms = overrides.pop("platforms", ["web", "app", "mini", "tv"])
        base: dict[str, Any] = {
            "broker_url": broker.url,
            "platforms": platforms,
            "topics": [f"{tid}.events.{p}.{a}" for p in platforms for a in ("click", "browse", "purchase")],
            "identity_topic": f"{tid}.identity.links",
            "dlq_topic": f"{tid}.interest.dlq",
            "models_topic": f"{tid}.interest.models",
            "person_topic": f"{tid}.interest.by_person",
            "person_partitions": 4,
            "topic_partitions": 2,
            "app_id": f"worker-{tid}",
            "store_url": f"sqlite:///{tmp_path}/profiles.db",
            "registry": str(tmp_path / "registry"),
            "data_dir": str(tmp_path / "data"),
            "session_timeout_s": 6.0,
            "heartbeat_interval_s": 1.0,
            "web_port": 0,
            "batch_wait_ms": 50,
        }
        base.update(overrides)
        return Settings(**base)

    return build


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small model trained on synthetic history and published: (registry root, version)."""
    root = tmp_path_factory.mktemp("registry")
    return str(root), train_tiny_model(root)
