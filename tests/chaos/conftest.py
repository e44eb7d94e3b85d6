"""Fixtures of the fault tests: settings that make several small batches, so a fault lands mid-stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from schemas.settings import Settings
from testkit.chaos import SEQ_LEN


@pytest.fixture
def chaos_settings(make_settings: Callable[..., Settings], model_registry: tuple[str, str]) -> Callable[..., Settings]:
    """``make_settings`` with the test model, a full-history window and small batches (many commits)."""

    def build(**overrides: Any) -> Settings:
        base: dict[str, Any] = {"registry": model_registry[0], "seq_len": SEQ_LEN, "batch_size": 50,
                                "retry_backoff_ms": 100, "retry_backoff_max_ms": 1000}
        base.update(overrides)
        return make_settings(**base)

    return build
