"""Lanes and denormals (model.cpu_lanes): the same vectors, row for row, however a call is split."""

from __future__ import annotations

import platform
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.cpu_lanes import LANE_MIN_ROWS, flush_denormals, lane_count, run_in_lanes
from model.runtime import EncoderRuntime
from testkit.models import make_sequences


def test_lane_count_keeps_every_lane_worth_its_split() -> None:
    assert lane_count(LANE_MIN_ROWS * 2 - 1, 4) == 1
    assert lane_count(LANE_MIN_ROWS * 2, 4) == 2
    assert lane_count(10_000, 4) == 4
    assert lane_count(10_000, 1) == 1


def test_run_in_lanes_returns_every_row_in_order() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def run(part: dict[str, np.ndarray]) -> np.ndarray:
        with lock:
            seen.append(len(part["x"]))
        return part["x"][:, None].astype(np.float32) * 2

    rows = np.arange(203)
    got = run_in_lanes(run, {"x": rows}, lanes=3)
    assert np.array_equal(got[:, 0], rows * 2)
    assert sorted(seen) == [67, 68, 68], "three contiguous lanes covering every row once"
    assert np.array_equal(run_in_lanes(run, {"x": rows[:5]}, lanes=3)[:, 0], rows[:5] * 2)


def test_an_error_in_any_lane_reaches_the_caller() -> None:
    def run(part: dict[str, np.ndarray]) -> np.ndarray:
        if part["x"][0] > 0:
            raise RuntimeError("lane failed")
        return part["x"][:, None]

    with pytest.raises(RuntimeError, match="lane failed"):
        run_in_lanes(run, {"x": np.arange(128)}, lanes=2)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 MXCSR only")
def test_lanes_flush_denormals_and_leave_the_callers_mode_alone() -> None:
    tiny = np.array([1e-39], dtype=np.float32)  # a denormal float32
    assert float((tiny * np.float32(1.0))[0]) > 0

    def in_lane(part: dict[str, np.ndarray]) -> np.ndarray:
        return part["x"] * np.float32(1.0)

    assert not run_in_lanes(in_lane, {"x": np.full(64, 1e-39, dtype=np.float32)}, lanes=2).any()
    assert float((tiny * np.float32(1.0))[0]) > 0, "the caller's floating-point mode changed"
    result: dict[str, Any] = {}

    def probe() -> None:
        result["set"] = flush_denormals()
        result["after"] = float((tiny * np.float32(1.0))[0])
        result["again"] = flush_denormals()  # once per thread, remembered

    worker = threading.Thread(target=probe)
    worker.start()
    worker.join()
    assert result == {"set": True, "after": 0.0, "again": True}


def test_runtime_lanes_give_the_single_lane_vectors(published: tuple[Path, Any]) -> None:
    one = EncoderRuntime.load(published[0], threads=1)
    lanes = EncoderRuntime.load(published[0], threads=3)
    assert (one.lanes, lanes.lanes) == (1, 3)
    seqs = make_sequences(300, seed=8)
    assert np.abs(one.encode(seqs) - lanes.encode(seqs)).max() < 1e-6


def test_a_lane_that_runs_lanes_itself_does_not_wait_on_its_own_pool() -> None:
    """A runtime called from a lane thread (nested use) runs inline there instead of deadlocking."""

    def inner(part: dict[str, np.ndarray]) -> np.ndarray:
        return part["x"][:, None] + 1

    def outer(part: dict[str, np.ndarray]) -> np.ndarray:
        return run_in_lanes(inner, part, lanes=4)

    rows = np.arange(64 * 40)  # 40 outer lanes wanted, more than the pool's 16 threads
    got = run_in_lanes(outer, {"x": rows}, lanes=40)
    assert np.array_equal(got[:, 0], rows + 1)
