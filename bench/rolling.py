"""Rolling redeploy under load: replace every worker one at a time, then prove nothing was lost.

    python -m bench.rolling [--workers 3] [--rate 300] [--users 1000] [--warmup-s 5] [--settle-s 3]
                            [--rounds 1] [--surge] [--split] [--hold-store-s 0] [--sigkill-last 0]
                            [--person-partitions 8] [--out-dir data/bench/rolling]

Starts the embedded broker, trains a small model, and runs the harness of
``testkit/rolling.py`` (the one ``tests/integration/test_rolling_redeploy.py`` runs
in CI at a small scale) with the given workers, rate and replacement plan.
Prints one JSON object: produced/stored counts, people matched/lost/
mismatched, duplicates redelivered vs applied, and for each replacement its
exit code and the backlog (events produced, not yet in the store) and
freshness (event time to profile written, from the workers' histograms) seen
until the next one. Draws events/s and backlog over time with the replacements
marked (``<out-dir>/rolling.png``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.adapters import load_adapters
from schemas.sequence import ACTIONS
from schemas.settings import Settings
from testkit.rolling import RollingConfig, public_report, run_rolling


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["_samples"]
    t = np.array([s["t"] for s in samples])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), dpi=100, sharex=True)
    if len(t) > 1:
        dt = np.maximum(np.diff(t), 1e-6)
        for key, color in (("produced", "tab:blue"), ("applied", "tab:green")):
            values = np.array([s[key] for s in samples])
            top.plot(t[1:], np.diff(values) / dt, color=color, label=f"events/s {key}")
        bottom.plot(t, [s["backlog"] for s in samples], color="tab:red",
                    label="backlog: events produced, not yet in the store")
    for rep in report["replacement_details"]:
        for ax in (top, bottom):
            ax.axvspan(min(rep["started_s"], rep["sigterm_s"]), rep["ready_s"], color="0.85", zorder=0)
            ax.axvline(rep["sigterm_s"], color="tab:orange", linestyle="--", linewidth=1)
    top.set_ylabel("events/s")
    top.set_title(f"rolling redeploy: {report['workers']} workers, {report['replacements']} replacements "
                  f"(dashed: SIGTERM; grey: successor started until all ready); lost {report['lost']}, "
                  f"mismatched {report['mismatched']}", fontsize=9)
    top.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("backlog (events)")
    bottom.set_xlabel("seconds since load start")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _train_small_model(root: Path, seed: int) -> str:
    """A small model on synthetic history, published to ``root`` (as the test fixture does)."""
    from model.trainer import TrainConfig, train

    adapters = load_adapters()
    traffic = SyntheticTraffic(adapters, users=300, items=800, seed=seed)
    rows = []
    for e in traffic.events(4000, int(time.time() * 1000) - 10 * 86_400_000, step_ms=60_000):
        if isinstance(e, RawEvent):
            _, platform, action = e.topic.split(".")
            item: Any = e.value
            for key in adapters[platform].item_field:
                item = item[key]
            rows.append({"user_id": e.person_id, "item_id": str(item), "timestamp": e.ts_ms,
                         "platform": platform, "action": action})
    cfg = TrainConfig(epochs=2, max_len=50, width=32, dim=64, layers=1, heads=2, seed=seed, progress=False)
    return str(train(rows, root, cfg, time_unit="ms").version)


def bench_settings(broker_url: str, work: Path, **overrides: Any) -> Settings:
    """Settings with their own topics, group, store and registry under ``work``."""
    tid = "r" + uuid.uuid4().hex[:8]
    platforms = ["web", "app", "mini", "tv"]
    base: dict[str, Any] = {
        "broker_url": broker_url, "platforms": platforms,
        "topics": [f"{tid}.events.{p}.{a}" for p in platforms for a in ACTIONS],
        "identity_topic": f"{tid}.identity.links", "dlq_topic": f"{tid}.interest.dlq",
        "models_topic": f"{tid}.interest.models", "person_topic": f"{tid}.interest.by_person",
        "app_id": f"rolling-{tid}", "store_url": f"sqlite:///{work}/profiles.db", "registry": str(work / "registry"),
        "data_dir": str(work / "data"), "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0, "web_port": 0,
        "batch_wait_ms": 50, "seq_len": 50,
    }
    base.update(overrides)
    return Settings(**base)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = RollingConfig()
    for name in ("workers", "rate", "users", "items", "seed", "warmup_s", "settle_s", "rounds", "catch_up_s",
                 "hold_store_s", "sigkill_last"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--surge", action="store_true", help="start the new worker before stopping the old")
    parser.add_argument("--split", action="store_true", help="every worker is `interest worker --split`")
    parser.add_argument("--person-partitions", type=int, default=8, help="bounds the useful workers")
    parser.add_argument("--out-dir", default="data/bench/rolling")
    args = parser.parse_args(argv)
    cfg = RollingConfig(**{k: getattr(args, k) for k in (*vars(args),) if k in RollingConfig.__dataclass_fields__})
    from interest.embedded import EmbeddedBroker

    out = Path(args.out_dir)
    work = out / f"run-{int(time.time())}"
    work.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_file=work / "broker.log") as broker:
        settings = bench_settings(broker.url, work.resolve(), person_partitions=args.person_partitions)
        version = _train_small_model(Path(settings.registry), cfg.seed)
        report = run_rolling(settings, version, cfg, work / "logs")
    _plot(report, out / "rolling.png")
    public = {"bench": "rolling", **public_report(report), "plot": str(out / "rolling.png")}
    print(json.dumps(public))
    return public


if __name__ == "__main__":
    main()
