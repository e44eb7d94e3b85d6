"""Every benchmark runs end to end in its ``--quick`` form and prints a well-formed JSON result.

Why: the benches are what the README quotes, so a refactor that breaks one must fail CI, not the
next person who wants numbers.  These checks are about shape and sanity (positive rates, ratios
that are the quotient of the reported numbers, targets with verdicts), never about speed: the
quick sizes are far too small for the targets to mean anything.  The bench model registry is
shared by the module, so the (quick) model is trained once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from interest.embedded import EmbeddedBroker

pytest.importorskip("torch")  # the naive baseline and the encoder bench compare with PyTorch eager

COMMON = {"bench", "command", "machine", "targets", "all_targets_met", "quick"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("bench-registry"))


def run_bench(main: Callable[[list[str]], dict[str, Any]], argv: list[str], capsys: pytest.CaptureFixture[str],
              ) -> dict[str, Any]:
    """Run a bench's ``main`` and parse the last stdout line, as a user's script would."""
    returned = main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    report: dict[str, Any] = json.loads(lines[-1])
    assert report == json.loads(json.dumps(returned, sort_keys=True, default=str))
    assert set(report) >= COMMON, COMMON - set(report)
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["command"].startswith(f"python -m bench.{report['bench']}")
    for name, verdict in report["targets"].items():
        assert {"value", "target", "met"} <= set(verdict), name
        assert isinstance(verdict["met"], bool)
    if "plot" in report:
        assert Path(report["plot"]).is_file()
    return report


def close(ratio: float | None, num: float, den: float) -> bool:
    return ratio is not None and abs(ratio - num / den) <= 1e-3 * max(1.0, num / den)


def test_throughput(tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.throughput import main

    # --split: the raw topics' group is APP_ID-ingest; the run ends only when both groups committed all.
    report = run_bench(main, ["--quick", "--split", "--out-dir", str(tmp_path), "--registry", registry], capsys)
    worker, passthrough, naive = (report[k] for k in ("worker", "passthrough", "naive"))
    assert report["settings"]["split"] is True
    envelope = report["envelopes"]["20"]
    for run in (worker, passthrough, naive, envelope):
        assert run["events_per_s"] > 0
    assert worker["profiles"] > 0 and worker["applied_events"] > 0.8 * report["events"]
    assert envelope["messages"] < worker["messages"]
    ratios = report["ratios"]
    assert close(ratios["worker_vs_passthrough"], worker["events_per_s"], passthrough["events_per_s"])
    assert close(ratios["worker_vs_naive"], worker["events_per_s"], naive["events_per_s"])
    assert close(ratios["envelope_vs_single"], envelope["events_per_s"], worker["events_per_s"])
    assert set(report["targets"]) == {"worker_vs_passthrough", "worker_vs_naive", "envelope_vs_single"}
    assert report["settings"]["store"] == "sqlite"


def test_freshness(tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.freshness import main

    report = run_bench(main, ["--quick", "--workers", "2", "--broker-floor", "--out-dir", str(tmp_path),
                              "--registry", registry], capsys)
    assert [r["rate"] for r in report["rates"]] == [200.0, 500.0]
    for run in report["rates"]:
        assert run["events"] > 0 and run["achieved_rate"] > 0
        assert run["readable"] + run["unreadable"] == run["events"]
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]
        # Both workers' histograms together saw every produced event arrive at each stage.
        assert run["hops"]["to_ingest"]["samples"] == run["hops"]["to_update"]["samples"] == run["events"]
        assert run["hops"]["to_ingest"]["p50_le_ms"] <= run["hops"]["to_update"]["p50_le_ms"]
        # The plain reader of the same raw topics saw the phase's events, one hop each: faster than two and a write.
        floor = run["broker_floor"]
        assert floor["messages"] >= 0.95 * run["events"], floor
        assert 0 <= floor["p50_ms"] <= floor["p99_ms"] and floor["p50_ms"] < run["p50_ms"], (floor, run["p50_ms"])
        # Who had the cores: the broker, the workers and this process each used some, none more than the machine.
        assert set(run["cores"]) == {"broker", "workers", "bench (load, reader)"}
        assert all(0 < c <= report["machine"]["cores"] for c in run["cores"].values()), run["cores"]
    # The two workers split the person partitions between them: each owns some, none owns one twice.
    spread = report["person_partitions_by_worker"]
    assert len(spread) == 2 and all(spread)
    assert sorted(p for parts in spread for p in parts) == list(range(report["person_partitions"]))
    assert "p99_ms_at_2000_per_s" in report["targets"]
    assert report["broker"] == "embedded Tansu (memory storage)" and (tmp_path / "freshness" / "broker.log").is_file()


def test_freshness_on_a_broker_it_did_not_start(tmp_path: Path, registry: str, broker: EmbeddedBroker,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--broker``: the run uses that cluster, starts no broker of its own and claims none of its CPU."""
    from bench.freshness import main

    report = run_bench(main, ["--quick", "--no-recovery", "--broker", broker.url, "--out-dir", str(tmp_path),
                              "--registry", registry], capsys)
    assert report["broker"] == broker.url
    assert not (tmp_path / "freshness" / "broker.log").exists()
    for run in report["rates"]:
        assert run["readable"] == run["events"] > 0
        assert set(run["cores"]) == {"workers", "bench (load, reader)"}


@pytest.mark.parametrize("url", ["kafka://", "kafka://host", "kafka://host:port", "k1:9092,k2"])
def test_a_malformed_broker_address_is_refused_before_anything_starts(tmp_path: Path, url: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from bench.freshness import main

    with pytest.raises(SystemExit):
        main(["--quick", "--broker", url, "--out-dir", str(tmp_path)])
    assert "expected kafka://host:port" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no model trained, no directory made


def test_encoder(tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.encoder import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path), "--registry", registry], capsys)
    assert {p["batch"] for p in report["cpu"]} == {1, 256}
    for point in report["cpu"]:
        assert point["ort_people_per_s"] > 0 and point["torch_people_per_s"] > 0
        assert close(point["speedup"], point["ort_people_per_s"], point["torch_people_per_s"])
        assert point["ort_people_per_s"] == pytest.approx(point["batch"] / (point["ort_ms"] / 1000), rel=0.01)
    assert report["runtime_people_per_s_batch256_seq50"] > 0
    assert (report["cuda"] is None) == (report["cuda_skipped"] is not None)
    assert report["architecture"]["layers"] >= 1


def test_memory(tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.memory import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path), "--registry", registry], capsys)
    assert 20 < report["rss_end_mb"] <= report["peak_rss_mb"] < 100_000
    assert report["people_cached"] > 0
    assert report["targets"]["peak_rss_mb"]["value"] == pytest.approx(report["peak_rss_mb"], abs=0.1)


def test_quality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("recbole", reason="MovieLens-100K ships with recbole")
    from bench.quality import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path)], capsys)
    assert 0 < report["ours"]["ndcg@10"] <= 1 and 0 < report["popularity"]["ndcg@10"] <= 1
    assert close(report["ratios"]["ndcg_vs_popularity"], report["ours"]["ndcg@10"], report["popularity"]["ndcg@10"])
    assert report["train_seconds"] > 0


def test_platforms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.platforms import main

    report = run_bench(main, ["--quick", "--quiet", "--out-dir", str(tmp_path)], capsys)
    assert report["traffic"] == "synthetic"
    tv = report["platforms"]["tv"]
    assert tv["version"] != report["shared_version"] and tv["items"] > 0
    for side in ("platform", "shared", "popularity"):
        assert 0 <= tv[side]["ndcg@10"] <= 1 and tv[side]["users"] > 0
    serving = report["serving"]
    assert serving["versions"] == 2 and serving["people_per_s_all_versions"] > 0
    assert close(serving["slowdown"], serving["people_per_s_shared_only"], serving["people_per_s_all_versions"])


def test_broker_hop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.broker_hop import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path)], capsys)
    assert report["sent"] > 0 and report["received"] == report["sent"]  # every message read back once
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert sum(w["messages"] for w in report["windows"]) == report["received"]
    fresh = report["fresh_topic"]  # the second topic on the same broker, read back whole as well
    assert fresh["sent"] > 0 and fresh["received"] == fresh["sent"]
    assert sum(w["messages"] for w in fresh["windows"]) == fresh["received"]


def test_broker_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.broker_fetch import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path)], capsys)
    levels = report["levels"]
    assert [lv["stored_batches"] for lv in levels] == [1, 301, 600]  # filled exactly as asked
    assert all(lv["newest_returned"] == report["probes"] for lv in levels)  # each fetch of the newest found it
    assert all(0 <= lv["newest_p50_ms"] <= lv["newest_p90_ms"] for lv in levels)
    assert report["targets"]["fetch_growth"]["value"] == report["ratios"]["last_vs_first_newest_p50"]


def test_store_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3
    from contextlib import closing

    from bench.store_write import main

    report = run_bench(main, ["--quick", "--out-dir", str(tmp_path)], capsys)
    assert all(run["cpu_us_per_person"] > 0 for runs in report["runs"].values() for run in runs)
    pages = {}
    for name in ("sqlite_defaults", "shipped"):  # each variant measured the file layout it names
        with closing(sqlite3.connect(tmp_path / "store_write" / f"{name}-0.db")) as conn:
            pages[name] = conn.execute("PRAGMA page_size").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] > 0
    assert pages == {"sqlite_defaults": 4096, "shipped": 16_384}
