"""What the fault tests share: traffic with its oracle, store-vs-oracle comparison, group offsets, the DLQ.

Why a module and not fixtures only: the comparisons are plain functions a
test calls several times (before and after a fault), and every test prints
the same kind of report, so the counts in CI logs read the same everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from interest.ops import read_dlq
from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.adapters import load_adapters
from schemas.settings import Settings
from streams.kafka_config import kafka_python_options
from testkit.helpers import scan, settings_env, wait_until
from testkit.oracle import Expected, expected_profiles

SOAK = os.environ.get("INTEREST_TEST_SOAK") == "1"
SEQ_LEN = 50  # the default window: people with longer histories evict, as in production


def report(title: str, **counts: Any) -> None:
    """One line a reader of the CI log can grep: what was injected and what was compared."""
    print(f"[chaos] {title}: " + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


@dataclass
class Traffic:
    """Produced raw events (and links) with the oracle computed from them alone."""

    produced: list[Any]
    oracle: dict[str, Expected]

    @property
    def events(self) -> int:
        return sum(e.count for e in self.oracle.values())


def synthetic(users: int, events: int, seed: int, start_ms: int | None = None, step_ms: int = 100) -> Traffic:
    traffic = SyntheticTraffic(load_adapters(), users=users, items=300, seed=seed)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - 3_600_000
    produced: list[Any] = list(traffic.events(events, start, step_ms=step_ms))
    return Traffic(produced, expected_profiles(produced))


def window_problems(row: Any, state: Any, exp: Expected, window: int) -> list[str]:
    """How a stored profile and state differ from the oracle when the window may have evicted events.

    Exact: the kept window (the newest ``window`` events by event time), the last
    event time, and the vector's counts while nothing was evicted.  Once events
    were evicted, an event that arrives older than a full window is dropped
    uncounted (it could never be in the window), so the count lies between the
    window size and the number of distinct events, and the platforms seen cover
    at least those of the kept window.
    """
    problems = []
    ids = [e.event_id for e in state.events]
    if ids != exp.window(window):
        problems.append("sequence differs")
    if row.last_ts_ms != exp.last_ts_ms:
        problems.append("last event time differs")
    low = min(exp.count, window) if exp.count > window else exp.count
    if not low <= row.event_count <= exp.count or row.event_count != state.event_count:
        problems.append(f"event_count {row.event_count} outside [{low}, {exp.count}]")
    kept_platforms = {e.platform for e in state.events}
    if not kept_platforms <= set(row.platforms) <= exp.platforms:
        problems.append("platforms differ")
    return problems


def mismatches(settings: Settings, version: str, oracle: dict[str, Expected]) -> list[str]:
    """Every way the store differs from the oracle (empty when equal)."""
    snap = scan(settings, version)
    out = [f"unexpected profile {p}" for p in set(snap["profiles"]) - set(oracle)]
    for person, exp in oracle.items():
        row = snap["profiles"].get(person)
        state = snap["states"].get(person)
        if row is None or state is None:
            out.append(f"{person}: missing")
            continue
        problems = window_problems(row, state, exp, settings.seq_len)
        out.extend(f"{person}: {p}" for p in problems)
    return out


def wait_for_oracle(settings: Settings, version: str, oracle: dict[str, Expected], timeout: float = 120) -> None:
    """Wait until the store equals the oracle; on timeout show the first differences."""
    last: list[str] = []

    def equal() -> bool:
        nonlocal last
        last = mismatches(settings, version, oracle)
        return not last

    try:
        wait_until(equal, timeout, interval=1.0, what="store equals the oracle")
    except AssertionError as exc:
        raise AssertionError(f"{len(last)} differences from the oracle, first: {last[:5]}") from exc


def stored_counts(settings: Settings, version: str) -> tuple[int, int]:
    """(profiles, sum of event_count) in the store."""
    profiles = scan(settings, version)["profiles"]
    return len(profiles), sum(p.event_count for p in profiles.values())


# -- consumer-group offsets ----------------------------------------------------------
def _partitions(consumer: KafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    out = []
    for topic in topics:
        for part in sorted(consumer.partitions_for_topic(topic) or ()):
            out.append(TopicPartition(topic, part))
    return out


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Last offset + 1 per partition, by reading the partitions to their end.

    Not ``KafkaConsumer.end_offsets``: Tansu 0.6.0 answers ListOffsets(latest)
    with 1 for a partition filled by one producer batch (seen: 129 records,
    end offset 1), so reading is the only trustworthy end.  Test topics are small.
    """
    consumer = KafkaConsumer(**kafka_python_options(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = _partitions(consumer, topics)
        ends = dict.fromkeys(tps, 0)
        if not tps:
            return ends
        consumer.assign(tps)
        consumer.seek_to_beginning()
        idle = 0
        while idle < 2:
            batch = consumer.poll(timeout_ms=500, max_records=100_000)
            idle = 0 if batch else idle + 1
            for tp, messages in batch.items():
                ends[tp] = max(ends[tp], messages[-1].offset + 1)
        return ends
    finally:
        consumer.close()


def by_group(settings: Settings, topics: Iterable[str], group: str | None = None) -> dict[str, list[str]]:
    """Topics under the group that commits them: ``group`` for all, else the worker's own split.

    The raw topics and identity links are committed by the ingest group (``raw_group``), the
    person topic by the Faust app's group.
    """
    from streams.faust_tuning import raw_group

    out: dict[str, list[str]] = {}
    raw = {*settings.raw_topics(), settings.identity_topic}
    for topic in topics:
        owner = group or (raw_group(settings) if topic in raw else settings.app_id)
        out.setdefault(owner, []).append(topic)
    return out


def group_lag(settings: Settings, topics: Iterable[str], group: str | None = None) -> dict[TopicPartition, int]:
    """Per partition: end offset minus the committing group's offset (what is not yet committed)."""
    lag: dict[TopicPartition, int] = {}
    for owner, mine in by_group(settings, topics, group).items():
        ends = end_offsets(settings, mine)
        consumer = KafkaConsumer(**kafka_python_options(settings), group_id=owner, enable_auto_commit=False)
        try:
            lag.update({tp: end - (consumer.committed(tp) or 0) for tp, end in ends.items()})
        finally:
            consumer.close()
    return lag


def committed(settings: Settings, topics: Iterable[str], group: str | None = None) -> int:
    """Sum of the committing groups' offsets over ``topics``."""
    total = 0
    for owner, mine in by_group(settings, topics, group).items():
        consumer = KafkaConsumer(**kafka_python_options(settings), group_id=owner, enable_auto_commit=False)
        try:
            total += sum(consumer.committed(tp) or 0 for tp in _partitions(consumer, mine))
        finally:
            consumer.close()
    return total


def reset_group_to_earliest(settings: Settings, topics: Iterable[str], group: str | None = None) -> int:
    """Reset stopped groups' committed offsets to the earliest; returns the partitions reset.

    Kafka's tool (``kafka-consumer-groups --reset-offsets``, kafka-python's
    ``reset_group_offsets``) commits as a non-member; Tansu 0.6.0 answers
    that with UNKNOWN_MEMBER_ID for a group that had members.  So the reset
    joins each group as its only member, commits the beginning offsets of
    every partition it is assigned, and leaves.
    """
    return sum(_reset_one(settings, mine, owner) for owner, mine in by_group(settings, topics, group).items())


def _reset_one(settings: Settings, topics: list[str], group: str) -> int:
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(**kafka_python_options(settings), group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    try:
        wanted = set(_partitions(consumer, topics))
        consumer.subscribe(topics)

        def assigned() -> bool:
            consumer.poll(timeout_ms=500, max_records=1)
            return consumer.assignment() == wanted

        wait_until(assigned, 60, interval=0.1, what="the reset consumer owns every partition")
        starts = consumer.beginning_offsets(list(wanted))
        consumer.commit({tp: OffsetAndMetadata(starts[tp], "", -1) for tp in wanted})
        return len(wanted)
    finally:
        consumer.close()


def worker_input_topics(settings: Settings) -> list[str]:
    """Topics the worker consumes (raw and identity: the ingest group; person: the Faust app's group)."""
    return [*settings.raw_topics(), settings.identity_topic, settings.person_topic]


def dlq(settings: Settings) -> list[dict[str, Any]]:
    """Every DLQ record (headers, raw text, raw_b64)."""
    return read_dlq(settings, limit=1_000_000)


def interest(settings: Settings, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``interest ARGS`` as a user runs it, with ``settings`` in the environment; output captured."""
    return subprocess.run([sys.executable, "-m", "interest.cli", *args], env={**settings_env(settings), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def raw_events(produced: Iterable[Any]) -> list[RawEvent]:
    return [p for p in produced if isinstance(p, RawEvent)]
