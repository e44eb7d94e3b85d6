"""Where a worker's time goes: py-spy samples of one saturated worker, classified into a per-event cost table.

    python -m bench.profile [--events 60000] [--users 10000] [--envelope N] [--rate R --seconds S]
                            [--sample-rate 100] [--quick]

Catch-up (the default): ``--events`` synthetic events are pre-produced like ``bench.throughput``, one real
``interest worker`` starts, and from its first applied event until its group committed everything (or
``--seconds``) ``py-spy record --format raw --threads --nonblocking`` samples it.  ``--rate R`` instead
produces R events/s for ``--seconds`` while the worker runs.  Each sampled stack gets one category: the
category of the innermost frame that a rule of ``RULES`` matches (``classify``, a pure function).
``--envelope N`` packs the catch-up's events N per message (as ``bench.throughput --envelopes``), to see
where an envelope catch-up's time goes once the per-message work is amortised.

Per event: each Python thread's CPU time over the window (``/proc/<pid>/task/*/stat``) is split by that
thread's sample shares, CPU of threads py-spy never sampled (onnxruntime's intra-op pool) is its own row,
and the sum is divided by the events the worker applied (``interest_events_applied_total``).  The PNG
under ``data/bench/profile/`` shows an icicle of the stacks (scaffolding frames removed, boxes coloured by
category) beside the per-event bars.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    add_broker_option,
    bench_settings,
    broker_name,
    command,
    embedded_broker,
    emit,
    ensure_model,
    knobs,
    machine,
    out_dir,
    plot_path,
    produce,
    quick_overrides,
    say,
    synthetic,
)
from bench.runs import Offsets, Proc, Stalled, wait_committed
from streams.faust_tuning import raw_group


@dataclass(frozen=True, slots=True)
class Rule:
    """``frame`` (a regex searched in one py-spy frame, ``func (package/file.py)``) gives ``category``.

    ``under``: only when an outer frame of the same stack matches it too.  ``leaf``: only as the innermost
    frame.  ``weak``: a carrier (asyncio, the Kafka connection) that only counts when no other rule matches
    any frame of the stack, so a commit's socket write is a commit, not "the event loop".
    """

    category: str
    frame: str
    why: str
    under: str | None = None
    leaf: bool = False
    weak: bool = False


UPDATE, INGEST = r"UpdateStage\.(consume|run)", r"IngestStage\.(consume|run)"
# Faust and mode frames, but the ones every stack of a thread starts with (no cost of their own).
FAUST = (r"^(?!(Worker\.execute_from_commandline|ServiceThread\._start_thread|WorkerThread\.run|"
         r"Service\._execute_task) ).*\((faust|mode)/")
RULES: tuple[Rule, ...] = (
    Rule("idle", r"select \(selectors|\((threading|queue)\.py\)|^_worker \(concurrent/|_poll_once|run_forever \(kafka/",
         "a thread blocked in select or on a lock that py-spy still counted as active", leaf=True),
    Rule("commit", r"\((faust|aiokafka|mode|asyncio)/", "Faust's and aiokafka's offset commits (the commit "
         "timer, OffsetCommit): everything under a commit frame", under=r"[Cc]ommit.* \((faust|aiokafka)/"),
    Rule("commit", r"[Cc]ommit.* \((faust|aiokafka)/", "the commit frame itself"),
    Rule("second hop", r"decode_envelope|_from_wire|raw_batch|" + FAUST,
         "the update stage reading the person topic back: Faust's stream and envelope decoding", under=UPDATE),
    Rule("second hop", r"\(streams/stages\.py\)", "the update stage's own loop around a batch",
         under=r"UpdateStage\.consume"),
    Rule("second hop", r"from_dict \(schemas/events\.py\)", "records rebuilt from envelopes",
         under=r"decode_envelope"),
    Rule("envelope produce", r"\(schemas/events\.py\)", "records serialised into envelopes",
         under=r"_to_wire|encode_envelope|_pack \("),
    Rule("envelope produce", r"\(aiokafka/producer/|Producer\.send|send \(faust/|\(faust/transport/producer",
         "producer send, its record accumulator and sender task"),
    Rule("envelope produce", FAUST + r"|\(aiokafka/", "Faust and aiokafka code inside a send",
         under=r"KafkaSender|Producer\.send"),
    Rule("envelope produce", r"encode_envelope|_to_wire|envelopes \(schemas|_pack \(schemas|add_records|"
         r"KafkaSender|deliver", "building and sending the person-topic envelopes"),
    Rule("routing", r"record_owner|person_partition|_murmur|group_by_partition|\(kafka/partitioner",
         "who owns a record and which person partition it goes to"),
    Rule("decode", r"decode_json|decode_link|Normalizer\.decode \(|IngestStage\.decode|topic_platform_action",
         "bytes -> JSON (orjson runs inside decode_json) and the per-message checks around it"),
    Rule("adapters", r"\(schemas/(adapters|events|normalize)\.py\)", "platform mapping to a CanonicalEvent",
         under=INGEST),
    Rule("faust per-message", r"raw_batch|" + FAUST, "Faust's stream, channel and ack per raw message",
         under=INGEST),
    Rule("faust per-message", r"IngestStage\.consume ", "the Faust ingest agent's loop around take_events"),
    Rule("faust per-message", r"_to_message|on_message|create_event|\.ack \(|put_nowait|TopicBuffer",
         "per message, either topic: a Faust Message per record, the conductor's dispatch, the stream queue"),
    Rule("ingest batch", r"\(streams/raw_reader\.py\)|\(heapq\.py\)|IngestStage\.run ",
         "the ingest stage's own loop around a batch; the batch reader's merge by time and offsets"),
    Rule("consumer fetch", FAUST, "Faust's fetch loop (_drain_messages: getmany through its consumer thread)",
         under=r"_drain_messages|Fetcher\._fetcher|ServiceThread\._start_thread"),
    Rule("faust per-message", FAUST, "the rest of Faust: streams, channels and events of both topics"),
    Rule("consumer fetch", r"\(aiokafka/(consumer|record)", "aiokafka fetching and parsing records (both topics)"),
    Rule("store read", r"load_(states|erasures|links)|resolve_links|select_in|_query \(streams|_states \(streams",
         "state, erasure and link reads of every batch (cache misses go to SQLite)"),
    Rule("encode: featurize", r"\(model/features\.py\)", "sequences -> padded id/feature arrays"),
    Rule("encode: interests", r"\(model/interests\.py\)", "several interests per person over the encoder output"),
    Rule("encode: onnx run", r"\(model/runtime\.py\)|\(onnxruntime/|_vectors \(streams|_encode \(streams",
         "the onnxruntime session run (the calling thread; the intra-op pool is its own row)"),
    Rule("store write", r"\(streams/stores/|\(sqlite3/|_write \(streams", "write_batch: row packing and SQLite"),
    Rule("merge", r"\(streams/updater\.py\)|\(schemas/(sequence|events)\.py\)",
         "merging events into sequences, copying cached states"),
    Rule("metrics", r"\(prometheus_client/|\(streams/(metrics|worker_stats)\.py\)", "Prometheus and /stats"),
    Rule("model watch", r"\(streams/model_watch\.py\)", "the model announcements' reader (kafka-python)"),
    Rule("consumer fetch", r"\(aiokafka/", "Kafka protocol and connection code outside a commit or a send",
         weak=True),
    Rule("model watch", r"\(kafka/", "kafka-python's network thread: only the model watch uses kafka-python",
         weak=True),
    Rule("event loop", r"\(asyncio/", "asyncio's own scheduling: the cost of many small tasks and callbacks",
         weak=True),
)
NATIVE = "encode: onnx threads"
ORDER = ["decode", "adapters", "routing", "faust per-message", "consumer fetch", "ingest batch",
         "envelope produce", "second hop", "merge", "store read", "encode: featurize", "encode: onnx run",
         NATIVE, "encode: interests", "store write", "commit", "metrics", "model watch", "event loop", "idle",
         "other"]
_COMPILED = [(rule, re.compile(rule.frame), re.compile(rule.under) if rule.under else None) for rule in RULES]
SCAFFOLD = re.compile(r"\((asyncio|concurrent|typer|click|mode|faust/(cli|worker|app))/|\(<frozen runpy>\)|"
                      r"\(threading\.py\)|^<module>|\(interest/(cli|worker_cmd)\.py\)|^Agent\._execute_actor|"
                      r"^create_app\.<locals>")


def classify(frames: Sequence[str]) -> str:
    """The category of one stack (outermost frame first): the innermost frame a rule matches decides,
    weak rules only when no other rule matches; nothing matched: ``other``."""
    for weak in (False, True):
        for i in range(len(frames) - 1, -1, -1):
            for rule, frame, under in _COMPILED:
                if rule.weak != weak or (rule.leaf and i != len(frames) - 1) or not frame.search(frames[i]):
                    continue
                if under is None or any(under.search(f) for f in frames[:i]):
                    return rule.category
    return "other"


def parse(line: str) -> tuple[str, list[str], int] | None:
    """One ``py-spy --format raw --threads`` line -> (thread id, frames outermost first, samples)."""
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = stack.split(";")
    thread = frames.pop(0) if frames and frames[0].startswith("thread (") else "thread (?)"
    match = re.match(r"thread \((\w+)\)", thread)
    return (match.group(1) if match else "?"), frames, int(count)


def tally(lines: Iterable[str]) -> dict[str, Counter[str]]:
    """Samples per category, per thread id."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        got = parse(line)
        if got is not None:
            out[got[0]][classify(got[1])] += got[2]
    return dict(out)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cost_table(samples: dict[str, Counter[str]], cpu: dict[str, float], events: int) -> dict[str, dict[str, Any]]:
    """Per category: share of busy (not idle) samples, share of CPU, µs of worker CPU per event.

    A thread's CPU is split by its busy samples: on a shared machine a thread waiting for a core is sampled
    in ``select`` as active, but spends no CPU there.  A thread never sampled (a native pool) is ``NATIVE``.
    """
    busy = Counter[str]()
    seconds: dict[str, float] = defaultdict(float)
    for tid, s in cpu.items():
        work = {c: n for c, n in samples.get(tid, Counter()).items() if c != "idle"}
        total = sum(work.values())
        busy.update(work)
        for category, n in work.items():
            seconds[category] += s * n / total
        if not total:
            seconds[NATIVE if tid not in samples else "idle"] += s
    all_samples, all_cpu = sum(busy.values()) or 1, sum(seconds.values()) or 1.0
    return {c: {"samples": busy[c], "share": round(busy[c] / all_samples, 4),
                "cpu_share": round(seconds[c] / all_cpu, 4), "cpu_s": round(seconds[c], 3),
                "us_per_event": round(seconds[c] / events * 1e6, 2) if events else None}
            for c in ORDER if busy[c] or seconds[c]}


def _py_spy() -> str:
    """The py-spy next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else (shutil.which("py-spy") or "py-spy")


def metric(port: int, name: str) -> float:
    """The sum of a Prometheus series (every label) from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {")


def wait_started(proc: Proc, port: int, timeout: float = 180.0) -> tuple[float, float]:
    """(ingested, applied) once the worker took its first event: start-up and the group join are not profiled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        with suppress(OSError):
            ingested = metric(port, "interest_events_in_total")
            if ingested > 0:
                return ingested, metric(port, "interest_events_applied_total")
        time.sleep(0.05)
    raise TimeoutError("the worker took no event")


def _wait_ready(proc: Proc, port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError("worker not ready")


def icicle(ax: Any, lines: Iterable[str], depth: int = 7, min_share: float = 0.004) -> None:
    """Collapsed stacks as an icicle (root at the top), scaffolding frames left out, coloured by category."""
    import matplotlib.pyplot as plt

    tree: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    total = 0
    for line in lines:
        got = parse(line)
        if got is None:
            continue
        category = classify(got[1])
        if category == "idle":
            continue
        frames = [f for f in got[1] if not SCAFFOLD.search(f)][:depth] or ["(asyncio and Faust scaffolding only)"]
        total += got[2]
        for level in range(1, len(frames) + 1):
            tree[tuple(frames[:level])][category] += got[2]
    cmap = plt.get_cmap("tab20")
    colours = {c: cmap(i % 20) for i, c in enumerate(ORDER)}
    left: dict[tuple[str, ...], float] = {(): 0.0}
    for path in sorted(tree, key=lambda p: (len(p), p)):
        width = sum(tree[path].values()) / max(total, 1)
        parent = path[:-1]
        if parent not in left or width < min_share:
            continue
        x = left[parent]
        left[parent] = x + width
        left[path] = x
        category = tree[path].most_common(1)[0][0]
        ax.barh(-len(path), width, left=x, height=0.95, color=colours.get(category, "grey"), edgecolor="white")
        label = re.sub(r" \(.*", "", path[-1])
        if width > 0.03:
            ax.text(x + 0.003, -len(path), label[: int(width * 160)], va="center", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("share of busy samples (asyncio, threading, mode and CLI frames left out)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in ORDER if c in colours]
    ax.legend(handles, [c for c in ORDER if c in colours], fontsize=6, ncol=4, loc="lower center",
              bbox_to_anchor=(0.5, -0.32))


def _plot(report: dict[str, Any], lines: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (flame, bars) = plt.subplots(1, 2, figsize=(16, 6.5), dpi=100, gridspec_kw={"width_ratios": [2.2, 1]})
    icicle(flame, lines)
    flame.set_title(f"worker stacks, {report['samples']} samples over {report['window_s']} s "
                    f"({report['mode']}, {report['machine']['cores']} cores)")
    table = report["categories"]
    names = [c for c in reversed(ORDER) if c in table]
    bars.barh(names, [table[c]["us_per_event"] or 0 for c in names], color="tab:blue")
    for y, c in enumerate(names):
        bars.text(table[c]["us_per_event"] or 0, y, f" {table[c]['us_per_event']} ({table[c]['cpu_share']:.0%})",
                  va="center", fontsize=7)
    bars.set_xlabel("µs of worker CPU per applied event")
    bars.set_title(f"{report['us_per_event_total']} µs/event in all ({report['events_per_cpu_s']} events/CPU-s)")
    bars.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="catch-up: events pre-produced")
    parser.add_argument("--envelope", type=int, default=1, help="catch-up: events per message")
    parser.add_argument("--rate", type=float, default=None, help="produce this many events/s instead (live)")
    parser.add_argument("--seconds", type=float, default=None, help="profile at most this long (live: 30)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--sample-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--registry", default=None, help="bench model registry (default OUT_DIR/registry)")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    add_broker_option(parser)
    args = parser.parse_args(argv)
    if args.envelope < 1 or (args.envelope > 1 and args.rate is not None):
        parser.error("--envelope takes N >= 1 and packs a catch-up's events; a live --rate sends one per message")
    if args.quick:
        args.events, args.users, args.items = min(args.events, 5_000), min(args.users, 500), min(args.items, 600)
    live = args.rate is not None
    seconds = args.seconds or (30.0 if live else args.timeout)
    directory = out_dir(args.out_dir, "profile")
    registry = args.registry or str(Path(args.out_dir) / "registry")
    report: dict[str, Any] = {"bench": "profile", "command": command("profile", argv), "machine": machine(),
                              "mode": f"{args.rate:g} events/s" if live else f"catch-up of {args.events} events"
                              + (f" in envelopes of {args.envelope}" if args.envelope > 1 else ""),
                              "users": args.users, "sample_rate": args.sample_rate, "quick": args.quick}
    report["model_version"] = ensure_model(registry, args.quick)
    raw = directory / "stacks.txt"
    with embedded_broker(directory, args.broker) as broker:
        report["broker"] = broker_name(broker)
        settings = bench_settings(broker.url, directory, f"p{int(time.time())}", registry,
                                  **quick_overrides(args))
        report["settings"] = knobs(settings)
        events = synthetic(args.events if not live else int(args.rate * seconds), args.users, args.items, args.seed)
        produced: dict[str, Any] = {}
        if not live:
            produced = produce(settings, events, envelope=args.envelope)
            say(f"produced {produced['events']} events in {produced['messages']} messages")
        proc = Proc.worker(settings, directory / "worker.log")
        spy: subprocess.Popen[bytes] | None = None
        try:
            feeder = None
            if live:
                from interest.produce import produce_events
                from streams.kafka_config import ensure_topics, worker_topics

                ensure_topics(settings, worker_topics(settings))
                _wait_ready(proc, settings.web_port)
                feeder = threading.Thread(target=produce_events, args=(settings, events, args.rate), daemon=True)
                feeder.start()
            ingested0, applied0 = wait_started(proc, settings.web_port)
            cpu0, started = thread_cpu(proc.proc.pid), time.monotonic()
            spy = subprocess.Popen([_py_spy(), "record", "--pid", str(proc.proc.pid), "--format", "raw", "--threads",
                                    "--nolineno", "--nonblocking", "--rate", str(args.sample_rate), "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=open(directory / "py-spy.log", "wb"))  # noqa: SIM115
            say(f"py-spy on the worker (pid {proc.proc.pid}) from {ingested0:.0f} ingested, {applied0:.0f} applied")
            if live:
                assert feeder is not None
                feeder.join(seconds)
            else:
                offsets = Offsets(settings, produced["end_offsets"])
                try:
                    wait_committed(offsets, settings.app_id, proc, seconds, stall_s=120.0,
                                   raw_group=raw_group(settings))
                except (Stalled, TimeoutError) as exc:
                    say(f"profiling window ended early: {exc}")
                finally:
                    offsets.close()
            window = time.monotonic() - started
            cpu1, spy_cpu = thread_cpu(proc.proc.pid), sum(thread_cpu(spy.pid).values())
            applied = metric(settings.web_port, "interest_events_applied_total") - applied0
            ingested = metric(settings.web_port, "interest_events_in_total") - ingested0
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
                spy.wait(timeout=60)
            proc.stop()
    lines = raw.read_text().splitlines() if raw.is_file() else []
    samples = tally(lines)
    cpu = {tid: round(cpu1.get(tid, 0.0) - cpu0.get(tid, 0.0), 3) for tid in cpu1}
    total_cpu = sum(cpu.values())
    report.update({"window_s": round(window, 2), "events_applied": int(applied), "events_ingested": int(ingested),
                   "events_per_s": round(applied / window, 1), "worker_cpu_s": round(total_cpu, 2),
                   "py_spy_cpu_s": round(spy_cpu, 2),
                   "cpu_per_wall": round(total_cpu / window, 2),
                   "samples": sum(sum(c.values()) for c in samples.values()),
                   "idle_samples": sum(c["idle"] for c in samples.values()),
                   "thread_cpu_s": {t: s for t, s in cpu.items() if s > 0.05},
                   "thread_samples": {t: sum(c.values()) for t, c in samples.items()},
                   "events_per_cpu_s": round(applied / total_cpu) if total_cpu else None,
                   "us_per_event_total": round(total_cpu / applied * 1e6, 1) if applied else None,
                   "categories": cost_table(samples, cpu, int(applied)), "stacks": str(raw)})
    # The event loop's thread runs both stages (and Faust): its CPU per event bounds one worker's rate.
    loop = str(proc.proc.pid)
    report["loop_thread"] = {"cpu_s": cpu.get(loop), "us_per_event": round(cpu.get(loop, 0.0) / applied * 1e6, 1)
                             if applied else None, "max_events_per_s": round(applied / cpu[loop]) if cpu.get(loop)
                             else None, "categories": cost_table({loop: samples.get(loop, Counter())},
                                                                 {loop: cpu.get(loop, 0.0)}, int(applied))}
    say("  ".join(f"{c} {v['cpu_share']:.1%} {v['us_per_event']}us" for c, v in report["categories"].items()))
    path = plot_path(directory, "profile")
    _plot(report, lines, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
