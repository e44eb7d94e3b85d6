"""Plumbing shared by the benchmarks: broker, bench model, traffic, worker process, offsets, output.

Conventions every ``bench/<name>.py`` follows, so numbers can be quoted and compared:

* progress goes to stderr; the last stdout line is exactly one JSON object holding the numbers, the
  same-run baselines, the ratios, each target with whether it was met, the machine and the command;
* baselines are measured in the same run as the thing they are compared with, so a ratio still holds
  on a noisy, shared machine even when the absolute numbers move;
* everything runs on the embedded defaults (Tansu broker, SQLite store) from a fresh clone; outputs
  (logs, stores, PNGs) go under ``data/bench/`` (gitignored).

The bench model is trained once with the default production architecture (``TrainConfig`` defaults,
context = the worker's ``seq_len``), cached in ``data/bench/registry`` and reused: the encoder cost
a benchmark measures is the cost a real deployment pays, but reruns do not pay the training again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

from interest.embedded import EmbeddedBroker, free_port
from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.sequence import ACTIONS
from schemas.settings import Settings

BENCH_DIR = Path("data/bench")
Event = RawEvent | tuple[str, dict[str, Any]]


def say(message: str) -> None:
    """Progress line on stderr (stdout is reserved for the one JSON result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- report ---------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    with suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb, "gpu": gpu_name(),
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, or None (no driver, no nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def command(name: str, argv: list[str] | None) -> str:
    """The command that reproduces this run."""
    return shlex.join(["python", "-m", f"bench.{name}", *(argv if argv is not None else sys.argv[1:])])


def target(value: float | None, threshold: float, higher_is_better: bool = True) -> dict[str, Any]:
    """A target with its verdict; a value that could not be measured is not met."""
    met = value is not None and (value >= threshold if higher_is_better else value < threshold)
    return {"value": None if value is None else round(value, 4), "target": (">= " if higher_is_better else "< ")
            + f"{threshold:g}", "met": bool(met)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank ``q`` quantile of ``values`` (any order), rounded to 0.1; None when empty."""
    data = sorted(values)
    return round(data[min(len(data) - 1, int(q * len(data)))], 1) if data else None


def ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else round(num / den, 4)


def emit(report: dict[str, Any]) -> dict[str, Any]:
    """Print the result as the last stdout line and return it."""
    print(json.dumps(report, sort_keys=True, default=str), flush=True)
    return report


def out_dir(base: str | os.PathLike[str], name: str) -> Path:
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- broker and settings --------------------------------------------------------------
def create_topic(url: str, name: str, partitions: int) -> None:
    """One topic of a bench's own at ``url``, made the way the worker makes its topics (``ensure_topics``)."""
    from streams.kafka_config import ensure_topics

    address: dict[str, Any] = {"broker_url": url}
    ensure_topics(Settings(**address), {name: partitions})


class ClusterBroker:
    """A broker this run did not start (``--broker``): an address, and no process whose CPU is ours to read."""

    proc = None

    def __init__(self, url: str) -> None:
        self.url = url


def add_broker_option(parser: argparse.ArgumentParser) -> None:
    """``--broker URL``: the same bench on an existing Kafka cluster instead of a fresh embedded one.

    Why: the embedded broker's fetch cost grows with every record batch it keeps (``bench.broker_fetch``),
    which is what bounds freshness after an overload here; on a real cluster the same run tells the
    worker's share apart.  Security comes from the usual ``INTEREST_KAFKA_*`` settings.
    """
    parser.add_argument("--broker", metavar="URL", default=None, type=_broker_address,
                        help="an existing Kafka cluster (kafka://host:9092,host2:9092) instead of a fresh embedded "
                        "broker; its security from INTEREST_KAFKA_*; the run makes topics of its own there (a prefix "
                        "per run) and leaves them")


def _broker_address(url: str) -> str:
    """A ``--broker`` value that names at least one ``host:port``; refused at parse time otherwise."""
    hosts = Settings.model_construct(broker_url=url).bootstrap_servers()
    if not hosts or not all(h.rpartition(":")[0] and h.rpartition(":")[2].isdigit() for h in hosts):
        raise argparse.ArgumentTypeError(f"{url!r}: expected kafka://host:port[,host:port...]")
    return url


def broker_name(broker: EmbeddedBroker | ClusterBroker) -> str:
    """What the report says the run used."""
    return "embedded Tansu (memory storage)" if isinstance(broker, EmbeddedBroker) else broker.url


@contextmanager
def embedded_broker(directory: Path, url: str | None = None) -> Iterator[EmbeddedBroker | ClusterBroker]:
    """A fresh Tansu broker (memory storage) for one benchmark run, or the cluster at ``url`` (``--broker``)."""
    if url:
        say(f"broker {url} (not started by this run)")
        yield ClusterBroker(url)
        return
    with EmbeddedBroker(log_file=directory / "broker.log") as broker:
        say(f"embedded broker on {broker.url}")
        yield broker


def bench_settings(broker_url: str, directory: Path, name: str, registry: str, **overrides: Any) -> Settings:
    """Worker settings for one run: own topics (prefix ``name``), group, store file and web port.

    Everything else is the shipped default (batch_size, batch_wait_ms, person_partitions, ...)
    except the consumer-group session timeout: with the default a join on Tansu waits about half
    of it, which is start-up noise, not worker speed (see the design notes).
    """
    platforms = ["web", "app", "mini", "tv"]
    run_dir = directory / name
    run_dir.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {
        "broker_url": broker_url,
        "platforms": platforms,
        "topics": [f"{name}.events.{p}.{a}" for p in platforms for a in ACTIONS],
        "identity_topic": f"{name}.identity.links",
        "dlq_topic": f"{name}.interest.dlq",
        "models_topic": f"{name}.interest.models",
        "person_topic": f"{name}.interest.by_person",
        "app_id": f"bench-{name}-{uuid.uuid4().hex[:6]}",
        "store_url": f"sqlite:///{run_dir.resolve()}/profiles.db",
        "registry": str(Path(registry).resolve()),
        "data_dir": str(run_dir.resolve()),
        "session_timeout_s": 6.0,
        "heartbeat_interval_s": 1.0,
        "web_port": free_port(span=2),  # --split: the ingest process serves on the port after it
        "use_gpu": "no",
    }
    base.update(overrides)
    return Settings(**base)


# --quick runs: a shorter session timeout makes the group join (about half of it on Tansu) ~1.5 s.
QUICK_SETTINGS: dict[str, Any] = {"session_timeout_s": 3.0, "heartbeat_interval_s": 0.5}


def quick_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """QUICK_SETTINGS for a ``--quick`` run on the embedded broker; none on a ``--broker`` cluster, whose
    ``group.min.session.timeout.ms`` (6 s by default) refuses the shorter session timeout."""
    return QUICK_SETTINGS if args.quick and not args.broker else {}


def knobs(settings: Settings) -> dict[str, Any]:
    """The worker settings a throughput number depends on."""
    keys = ("batch_size", "batch_wait_ms", "update_batch_wait_ms", "update_batch_envelopes", "person_partitions",
            "topic_partitions", "seq_len", "session_timeout_s", "malloc_arena_max", "use_gpu")
    return {k: getattr(settings, k) for k in keys} | {"store": "sqlite"}


# -- the bench model ------------------------------------------------------------------
MODEL_LEVELS = {"quick": {"users": 200, "items": 500, "events": 3_000, "epochs": 1},
                "full": {"users": 2_000, "items": 3_000, "events": 60_000, "epochs": 4}}


@functools.cache
def _adapters() -> dict[str, Any]:
    from schemas.adapters import load_adapters

    return load_adapters()


def raw_field(event: RawEvent, field: str = "item_field") -> str:
    """A field of a raw event (``item_field``, ``event_id_field``, ...) found through its platform's adapter."""
    cur: Any = event.value
    for key in getattr(_adapters()[event.topic.split(".")[-2]], field):
        cur = cur[key]
    return str(cur)


def item_of(event: RawEvent) -> str:
    """The item id inside a raw event."""
    return raw_field(event, "item_field")


def ensure_model(registry: str | os.PathLike[str], quick: bool, seq_len: int = 50) -> str:
    """The promoted bench model version, training it (default architecture) only when missing.

    A ``full`` model is reused by quick runs too; a quick-only registry is retrained by a full run.
    """
    from model.registry import ModelRejected, Registry

    root = Path(registry)
    level = "quick" if quick else "full"
    marker = root / "bench-model.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("seq_len") == seq_len and (info.get("level") == "full" or level == "quick"):
            try:
                Registry(root).verify(info["version"])
                say(f"bench model: reusing {info['version']} ({info['level']}) from {root}")
                return str(info["version"])
            except ModelRejected as exc:
                say(f"bench model in {root} rejected ({exc}); retraining")
    from model.trainer import TrainConfig, train
    from schemas.adapters import load_adapters

    size = MODEL_LEVELS[level]
    say(f"bench model: training the default architecture ({level}: {size}) into {root} ...")
    traffic = SyntheticTraffic(load_adapters(), users=size["users"], items=size["items"], seed=1000)
    start = int(time.time() * 1000) - 30 * 86_400_000
    rows = [{"user_id": e.person_id, "item_id": item_of(e), "timestamp": e.ts_ms,
             "platform": e.topic.split(".")[1], "action": e.topic.split(".")[2]}
            for e in traffic.events(size["events"], start, step_ms=60_000) if isinstance(e, RawEvent)]
    cfg = TrainConfig(epochs=size["epochs"], max_len=seq_len, time_budget_s=300, progress=False, seed=0)
    result = train(rows, root, cfg, time_unit="ms", force=True)
    marker.write_text(json.dumps({"version": result.version, "level": level, "seq_len": seq_len,
                                  "train_seconds": round(result.train_seconds, 1)}))
    say(f"bench model: {result.version} in {result.total_seconds:.0f}s")
    return str(result.version)


# -- traffic ------------------------------------------------------------------------
def synthetic(count: int, users: int, items: int, seed: int, anonymous_share: float = 0.2,
              start_ms: int | None = None, step_ms: float = 5.0) -> list[Event]:
    """``count`` Zipf-skewed events on every platform (plus the identity links they imply)."""
    from schemas.adapters import load_adapters

    traffic = SyntheticTraffic(load_adapters(), users=users, items=items, seed=seed, anonymous_share=anonymous_share)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - 86_400_000
    return list(traffic.events(count, start, step_ms))


def produce(settings: Settings, events: list[Event], envelope: int = 1) -> dict[str, Any]:
    """Pre-produce ``events`` (kafka-python, as ``interest produce`` does); returns counts and end offsets.

    ``envelope > 1`` packs that many events of one topic partition per message.  Envelopes group by
    (topic, partition of the key) rather than by key: with thousands of people a per-key envelope
    holds one or two events, while a collector that batches per partition (what envelopes are for)
    fills them.  Per-partition order is the same either way.

    The end offsets come from the broker's acknowledgements, not from ListOffsets: the embedded
    broker (Tansu) answers ListOffsets(latest) with the base offset of the last record batch + 1,
    which undercounts whenever the producer batched several records.
    """
    from kafka.partitioner.default import murmur2

    from interest.produce import make_producer, raw_topic_map
    from streams.kafka_config import ensure_topics, worker_topics

    started = time.perf_counter()
    ensure_topics(settings, worker_topics(settings))
    topic_of = raw_topic_map(settings)
    producer = make_producer(settings)
    ends: dict[tuple[str, int], int] = {}
    pending: dict[tuple[str, int], list[RawEvent]] = defaultdict(list)
    sent = messages = 0

    def acked(meta: Any) -> None:
        key = (meta.topic, meta.partition)
        ends[key] = max(ends.get(key, 0), meta.offset + 1)

    def send(topic: str, key: bytes, value: bytes) -> None:
        nonlocal messages
        producer.send(topic, key=key, value=value).add_callback(acked)
        messages += 1

    def send_group(group: list[RawEvent]) -> None:
        nonlocal sent
        value = orjson.dumps(group[0].value if envelope <= 1 else {"events": [g.value for g in group]})
        send(topic_of.get(group[0].topic, group[0].topic), group[0].key.encode(), value)
        sent += len(group)

    try:
        for item in events:
            if not isinstance(item, RawEvent):
                send(settings.identity_topic, str(item[1]["device_id"]).encode(), orjson.dumps(item[1]))
            elif envelope <= 1:
                send_group([item])
            else:
                slot = (item.topic, (murmur2(item.key.encode()) & 0x7FFFFFFF) % settings.topic_partitions)
                pending[slot].append(item)
                if len(pending[slot]) >= envelope:
                    send_group(pending.pop(slot))
        for group in pending.values():
            send_group(group)
        producer.flush()
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    if sum(ends.values()) < messages:
        raise RuntimeError(f"only {sum(ends.values())} of {messages} messages were acknowledged")
    return {"events": sent, "messages": messages, "seconds": round(seconds, 2),
            "messages_per_s": round(messages / seconds) if seconds else None, "end_offsets": ends}


def plot_path(directory: Path, name: str) -> Path:
    """Where a bench's PNG goes (matplotlib is imported lazily: only the plotting needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    return directory / f"{name}.png"
