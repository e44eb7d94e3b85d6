"""Poison pills at the head of a partition, DLQ replay after a fix, and a store outage.

What a user relies on: one message that can never be processed costs a few
bounded retries and lands in the DLQ with its reason and bytes, while the
rest of its partition keeps flowing; after a fix, ``interest dlq replay``
brings what the DLQ held back.  A store that refuses writes stops the worker
from committing (so nothing is lost) without crashing it, and the worker
catches up when the store returns.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from interest.produce import produce_events
from schemas.events import CanonicalEvent
from schemas.records import decode_envelope, encode_envelope, person_partition
from schemas.settings import Settings
from streams.kafka_config import ensure_topics, kafka_python_options, worker_topics
from testkit.chaos import (
    committed,
    dlq,
    group_lag,
    interest,
    report,
    stored_counts,
    synthetic,
    wait_for_oracle,
)
from testkit.helpers import WorkerProcess, metric_value, run_cli, wait_until

POISON_PERSON = "poison-1"


def _poison_record() -> CanonicalEvent:
    """A record that passes decoding but can never be stored: its time overflows a 64-bit write timestamp."""
    return CanonicalEvent("poison-e1", POISON_PERSON, "web", POISON_PERSON, "click", "i1", 2**62, 1.0)


def test_poison_pill_reaches_the_dlq_and_dlq_replay_restores_after_a_fix(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    settings = chaos_settings(retry_attempts=2)
    ensure_topics(settings, worker_topics(settings))
    part = person_partition(POISON_PERSON, settings.person_partitions)
    poison = encode_envelope([_poison_record()])
    producer = KafkaProducer(**kafka_python_options(settings))
    producer.send(settings.person_topic, value=poison, partition=part).get(timeout=10)
    producer.close()
    traffic = synthetic(users=40, events=600, seed=43)
    victim = max(traffic.oracle, key=lambda p: traffic.oracle[p].count)  # a person a "bug" fails on
    others = {p: e for p, e in traffic.oracle.items() if p != victim}
    produce_events(settings, traffic.produced)

    tp = TopicPartition(settings.person_topic, part)
    samples: list[int] = []
    with WorkerProcess(settings, tmp_path, name="buggy", INTEREST_TEST_POISON=victim) as worker:
        def drained() -> bool:
            samples.append(group_lag(settings, [settings.person_topic])[tp])
            return samples[-1] == 0 and not any(group_lag(settings, [settings.person_topic]).values())

        wait_until(drained, 120, interval=1.0, what="person topic fully committed past the poison")
        wait_for_oracle(settings, version, others)
        logs = worker.logs()
    dead = dlq(settings)
    failed = [d for d in dead if d["error_class"] == "update_failed"]
    poisoned = [d for d in failed if POISON_PERSON in d["error_message"]]
    bugged = [d for d in failed if victim in d["error_message"]]
    report("poison pill", injected=f"ts_ms=2**62 at head of {settings.person_topic}[{part}] + bug for {victim}",
           lag_samples=samples, dlq_update_failed=len(failed), batch_failures_logged=logs.count("batch failed"),
           people_ok=len(others), events_ok=sum(e.count for e in others.values()))
    assert len(poisoned) == 1 and bugged, [d["error_message"] for d in failed]
    assert "OverflowError" in poisoned[0]["error_message"]
    assert decode_envelope(base64.b64decode(poisoned[0]["raw_b64"])) == decode_envelope(poison)
    assert poisoned[0]["source_topic"] == settings.person_topic
    assert "batch failed (attempt 3/3)" in logs and "attempt 4/" not in logs, "retries are bounded"
    assert samples[-1] == 0, "the poison's partition was committed to its end: the poison did not block it"

    # The fix is deployed (no injected bug); replay the DLQ: the victim's events come back.
    with WorkerProcess(settings, tmp_path, name="fixed"):
        replayed = run_cli(settings, "dlq", "replay")
        wait_for_oracle(settings, version, traffic.oracle)

        def poison_dead_again() -> list[dict[str, Any]]:
            return [d for d in dlq(settings) if POISON_PERSON in d.get("error_message", "")][1:]

        wait_until(poison_dead_again, 60, interval=1.0, what="the replayed poison failed again")
        again = run_cli(settings, "dlq", "replay")  # only what was dead-lettered since the first replay
    report("dlq replay after the fix", replayed=replayed["replayed"], second_replay=again["replayed"],
           profiles=stored_counts(settings, version)[0], dlq_records=len(dlq(settings)))
    assert replayed["replayed"] == len(dead), "every DLQ record was re-injected once"
    assert again["replayed"] == 1, "a second replay re-injects only the record that failed again"


def _lock_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.parametrize("backend", ["sqlite", "cassandra"])
def test_store_outage_stops_commits_and_catches_up(
    backend: str, chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    _, version = model_registry
    overrides: dict[str, Any] = {}
    faults = None
    if backend == "cassandra":
        from testkit.cqlserver.fixtures import CQL_PASSWORD, CQL_USER, unique_keyspace

        server = request.getfixturevalue("cql_server")
        faults = request.getfixturevalue("cql_faults")
        overrides = {"store_url": server.url(unique_keyspace(), dc="datacenter1"), "cassandra_username": CQL_USER,
                     "cassandra_password": CQL_PASSWORD, "cassandra_replication": "datacenter1:1",
                     "cassandra_request_timeout_s": 2.0}
    settings = chaos_settings(**overrides)
    if backend == "cassandra":
        init = interest(settings, "store", "init", "--dim", "64")
        assert init.returncode == 0, init.stderr
    first = synthetic(users=30, events=300, seed=47)
    second = synthetic(users=30, events=300, seed=48, start_ms=int(time.time() * 1000) - 1_800_000)
    oracle = synthetic(0, 0, 0)
    oracle.produced = first.produced + second.produced
    from testkit.oracle import expected_profiles

    oracle.oracle = expected_profiles(oracle.produced)
    person_topic = [settings.person_topic]
    with WorkerProcess(settings, tmp_path, name=f"outage-{backend}") as worker:
        pid = worker.proc.pid if worker.proc else None
        produce_events(settings, first.produced)
        wait_for_oracle(settings, version, first.oracle)
        wait_until(lambda: not any(group_lag(settings, person_topic).values()), 60, what="first part committed")
        lock = _lock_sqlite(settings.sqlite_path()) if backend == "sqlite" else None
        if faults is not None:
            faults.inject("write_timeout")
        try:
            produce_events(settings, second.produced)
            wait_until(lambda: metric_value(worker.get("/metrics")[1] or "", "interest_store_unavailable_total") >= 2,
                       90, interval=0.5, what="the worker saw the outage twice")
            frozen = committed(settings, person_topic)
            wait_until(lambda: metric_value(worker.get("/metrics")[1] or "", "interest_store_unavailable_total") >= 4,
                       90, interval=0.5, what="more retries during the outage")
            during = committed(settings, person_topic)
            lag_during = sum(group_lag(settings, person_topic).values())
            health = worker.get("/health")[0]
            alive = worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
        finally:
            if lock is not None:
                lock.rollback()
                lock.close()
            if faults is not None:
                faults.clear()
        wait_for_oracle(settings, version, oracle.oracle)
        retries = metric_value(worker.get("/metrics")[1], "interest_store_unavailable_total")
    report(f"store outage ({backend})", injected="BEGIN EXCLUSIVE lock" if lock else "write_timeout on every write",
           committed_when_seen=frozen, committed_later_in_outage=during, lag_during_outage=lag_during,
           store_retries=int(retries), health_during=health, same_process=alive,
           final=stored_counts(settings, version), oracle_events=oracle.events)
    assert during == frozen, "no offset was committed while the store refused writes"
    assert lag_during > 0 and health == 200 and alive, "the worker stayed up, holding its backlog"
