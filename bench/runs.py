"""Benchmarked processes and how far their consumer groups have committed.

Why a module of its own: "all committed" is the finish line of the throughput and memory benches,
and it has to be measured from outside the worker, against end offsets this process can trust
(the embedded broker's ListOffsets cannot be, see ``bench.common.produce``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.settings import Settings


class Proc:
    """A benchmarked subprocess (``interest worker`` or the pass-through app) with its log and peak RSS."""

    def __init__(self, args: list[str], settings: Settings, log: Path) -> None:
        env = settings.child_env()
        self.log = log
        self.settings = settings
        self.split = False  # `interest worker --split` (set by ``worker``)
        handle = open(log, "ab")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, *args], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        handle.close()

    @classmethod
    def worker(cls, settings: Settings, log: Path, split: bool = False) -> Proc:
        """The real ``interest worker`` (same entry point as the console script); ``split``: ``--split``."""
        proc = cls(["-m", "interest.cli", "worker", *(["--split"] if split else [])], settings, log)
        proc.split = split
        return proc

    def ports(self) -> list[int]:
        """The web ports it serves /metrics on: one, or two with ``--split`` (ingest on the next port)."""
        from interest.split_worker import stage_ports

        return stage_ports(self.settings.web_port, self.split)

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MB from /proc, its children's (``--split``) added; (0, 0) once gone.

        With children the peak is the sum of each process's peak: an upper bound of the pair's.
        """
        now, peak = 0.0, 0.0
        for one in with_children(self.proc.pid):
            try:
                status = Path(f"/proc/{one}/status").read_text()
            except OSError:
                continue
            fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
            now += int(fields.get("VmRSS", 0)) / 1024
            peak += int(fields.get("VmHWM", 0)) / 1024
        return now, peak

    def cpu_s(self) -> float:
        """CPU seconds (user + system) so far of the process and its children (``--split``)."""
        return cpu_seconds(self.proc.pid)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.log.name}: process exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: once a run is measured its graceful shutdown (about
        two seconds of Faust stopping services) is irrelevant, and must not overlap the next run."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: children (--split) too
                self.proc.wait()


class Offsets:
    """How far a consumer group has committed, against end offsets this process knows to be true.

    Raw topics: the ends recorded by :func:`produce`.  The person topic: the worker writes it, so a
    kafka-python consumer with assigned partitions tails it (envelopes: few messages) and records
    the last offset it saw; the broker's ListOffsets cannot be trusted (see :func:`produce`).
    """

    def __init__(self, settings: Settings, raw_ends: dict[tuple[str, int], int]) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        from streams.kafka_config import kafka_python_options

        opts = kafka_python_options(settings)
        self.admin = KafkaAdminClient(**opts, client_id="bench-offsets")
        self.raw_ends = {TopicPartition(t, p): end for (t, p), end in raw_ends.items()}
        self.person = [TopicPartition(settings.person_topic, p) for p in range(settings.person_partitions)]
        self.person_ends: dict[Any, int] = dict.fromkeys(self.person, 0)
        self.tail = KafkaConsumer(**opts, client_id="bench-tail", enable_auto_commit=False, fetch_max_wait_ms=100)
        self.tail.assign(self.person)
        self.tail.seek_to_beginning(*self.person)
        self.final = False

    def committed(self, group: str, tps: list[Any]) -> dict[Any, int]:
        got = self.admin.list_group_offsets({group: tps}).get(group, {})
        return {tp: (meta.offset if meta is not None and meta.offset >= 0 else 0) for tp, meta in got.items()}

    def raw_lag(self, group: str) -> tuple[int, int]:
        """(raw messages not yet committed by ``group``, raw messages in all)."""
        done = self.committed(group, list(self.raw_ends))
        return sum(max(end - done.get(tp, 0), 0) for tp, end in self.raw_ends.items()), sum(self.raw_ends.values())

    def poll_person(self, timeout_ms: int = 0) -> int:
        """Advance the person-topic tail; returns how many messages it read."""
        count = 0
        for tp, records in self.tail.poll(timeout_ms=timeout_ms, max_records=10_000).items():
            count += len(records)
            self.person_ends[tp] = max(self.person_ends[tp], records[-1].offset + 1)
        return count

    def person_lag(self, group: str) -> int:
        """Person-topic messages not yet committed; call once every raw message is committed (ends final)."""
        if not self.final:
            while self.poll_person(300) or self.poll_person(300):
                pass
            self.final = True
        done = self.committed(group, self.person)
        return sum(max(end - done.get(tp, 0), 0) for tp, end in self.person_ends.items())

    def person_progress(self, group: str) -> tuple[int, int]:
        """(person-topic messages committed by ``group``, seen so far): the update stage's progress."""
        done = self.committed(group, self.person)
        return sum(done.values()), sum(self.person_ends.values())

    def close(self) -> None:
        self.tail.close()
        self.admin.close()


class Stalled(RuntimeError):
    """The process made no progress for too long (it would never finish)."""


def wait_committed(offsets: Offsets, group: str, proc: Proc, timeout: float, person: bool = True,
                   on_sample: Callable[[float, int], None] | None = None, poll_s: float = 0.25,
                   stall_s: float = 120.0, raw_group: str | None = None) -> float:
    """Seconds from ``proc`` start until ``group`` committed every raw message (and person envelope).

    The person topic is checked only once every raw message is committed: only then is its end
    final (the ingest agent acknowledges a raw batch after its envelopes were acknowledged).
    ``raw_group``: the raw topics' group when it is not ``group`` (``interest worker --split``).
    ``on_sample(t, raw_messages_committed)`` sees the progress.  No commit progress for ``stall_s``
    (start-up included) raises :class:`Stalled` with the log's last warnings.
    """
    deadline = time.monotonic() + timeout
    lag, last, moved = -1, None, time.monotonic()
    while time.monotonic() < deadline:
        proc.check()
        if person:
            offsets.poll_person()
        lag, total = offsets.raw_lag(raw_group or group)
        now = time.monotonic() - proc.started
        if on_sample is not None:
            on_sample(now, total - lag)
        person_lag = offsets.person_lag(group) if person and lag == 0 else 0
        if lag == 0 and person_lag == 0:
            return now
        if (lag, person_lag) != last:
            last, moved = (lag, person_lag), time.monotonic()
        elif time.monotonic() - moved > stall_s:
            warnings = [line for line in proc.log.read_text(errors="replace").splitlines() if "WARNING" in line]
            raise Stalled(f"no progress for {stall_s:.0f}s (raw lag {lag}, person lag {person_lag}); "
                          f"last warning: {warnings[-1][:400] if warnings else 'none'}")
        time.sleep(poll_s)
    raise TimeoutError(f"group {group} did not commit everything within {timeout}s (raw lag {lag})")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """utime + stime of ``pid`` (all its threads) and, with ``children``, its live children's, from /proc (0 once gone).

    Why per process: on a 2-core machine the broker, the load generator and the worker share the cores,
    and a phase that gets slower is explained by who took them (``bench.freshness`` reports cores per phase).
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in with_children(pid) if children else [pid]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return total


def with_children(pid: int) -> list[int]:
    """``pid`` and its live children (a ``--split`` worker's two stages), from /proc."""
    try:
        return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return [pid]
