"""The stream worker end to end: real embedded broker, real SQLite, real onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from interest.produce import produce_events
from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.adapters import load_adapters
from streams.dlq import headers_dict
from streams.kafka_config import ensure_topics, kafka_python_options, worker_topics
from testkit.chaos import wait_for_oracle, window_problems
from testkit.helpers import WorkerProcess, checksum, metric_value, scan, wait_until
from testkit.oracle import expected_profiles


def test_synthetic_traffic_becomes_one_profile_per_person(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry)
    traffic = SyntheticTraffic(load_adapters(), users=40, items=300, seed=11)
    produced = list(traffic.events(800, int(time.time() * 1000) - 3_600_000, step_ms=100))
    oracle = expected_profiles(produced)
    total = sum(e.count for e in oracle.values())

    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, produced)

        # At the default window some people evict: exact on the kept window, bounded on the counts.
        wait_for_oracle(settings, version, oracle, timeout=90)
        status, stats = worker.get("/stats")
        assert status == 200 and stats["model_version"] == version
        # Freshness counts from when each event reached Kafka, not from its (hour-old) event time.
        assert 0 <= stats["freshness_p50_ms"] <= stats["freshness_p99_ms"] < 60_000, stats
        status, text = worker.get("/metrics")
        assert "interest_events_in_total" in text and "interest_freshness_seconds_bucket" in text
        snap = scan(settings, version)
        before = checksum(snap)

    assert set(snap["profiles"]) == set(oracle), "exactly one profile per person (anonymous ones merged)"
    assert any(e.count > settings.seq_len for e in oracle.values()), "someone's history must evict"
    for person, exp in oracle.items():
        row, state = snap["profiles"][person], snap["states"][person]
        assert window_problems(row, state, exp, settings.seq_len) == [], person
        assert row.vector.shape == (64,) and abs(float((row.vector ** 2).sum()) - 1.0) < 1e-3, person
    assert len({p for e in oracle.values() for p in e.platforms}) == 4

    # Replay every topic from offset 0 with a fresh consumer group: no row may change.
    replay = settings.model_copy(update={"app_id": settings.app_id + "-replay"})
    with WorkerProcess(replay, tmp_path, name="replay") as worker:
        wait_until(lambda: worker.get("/stats")[1]["events_in"] >= total, 90, interval=1.0, what="replayed")
        # Wait for the update stage itself: every replayed record seen and dropped, as a duplicate of the
        # window or as older than a full window (an evicted event).
        def dropped() -> float:
            text = worker.get("/metrics")[1] or ""
            return metric_value(text, "interest_events_duplicate_total") + metric_value(
                text, "interest_events_too_late_total")

        wait_until(lambda: dropped() >= total, 90, interval=0.5, what="the update stage saw the whole replay")
        _, text = worker.get("/metrics")
        assert metric_value(text, "interest_events_applied_total") == 0, "a replayed event was applied again"
    assert checksum(scan(settings, version)) == before, "replaying from offset 0 changed a row"


def test_identity_link_moves_device_history_to_the_person(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry)
    now = int(time.time() * 1000)
    produced: list[Any] = [
        RawEvent(f"events.web.{a}", "dev-9", {"eid": f"a{i}", "anon_id": "dev-9", "type": raw, "item_id": f"i{i}",
                                              "ts": now - 10_000 + i}, "u9", now)
        for i, (a, raw) in enumerate([("click", "click"), ("browse", "view"), ("purchase", "purchase")])
    ]
    produced.append(RawEvent("events.app.click", "u9", {"event_id": "b1", "user_id": "u9", "event": "tap",
                                                         "sku": "s1", "time": (now - 5_000) / 1000}, "u9", now))
    with WorkerProcess(settings, tmp_path):
        produce_events(settings, produced)
        wait_until(lambda: "anon:web:dev-9" in scan(settings, version)["profiles"], 60, what="anon profile")
        produce_events(settings, [("link", {"platform": "web", "device_id": "dev-9", "person_id": "u9",
                                            "ts_ms": now - 1000})])
        wait_until(lambda: getattr(scan(settings, version)["profiles"].get("u9"), "event_count", 0) == 4, 60,
                   what="device history merged into u9")
        # Later anonymous events of the linked device go straight to the person.
        produce_events(settings, [RawEvent("events.web.click", "dev-9", {"eid": "a9", "anon_id": "dev-9",
                                                                         "type": "click", "item_id": "i9",
                                                                         "ts": now}, "u9", now)])
        wait_until(lambda: getattr(scan(settings, version)["profiles"].get("u9"), "event_count", 0) == 5, 60,
                   what="post-link event applied to u9")
    snap = scan(settings, version)
    assert "anon:web:dev-9" not in snap["profiles"] and "anon:web:dev-9" not in snap["states"]
    assert set(snap["profiles"]["u9"].platforms) == {"web", "app"}

    # The query CLI reads the same rows.
    import json
    import subprocess
    import sys

    from testkit.helpers import settings_env

    def cli(*args: str) -> Any:
        proc = subprocess.run([sys.executable, "-m", "interest.cli", *args, "--json"], env=settings_env(settings),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    shown = cli("profile", "u9")
    assert shown["event_count"] == 5 and shown["model_version"] == version and len(shown["vector"]) == 64
    recs = cli("recommend", "u9", "-k", "5")
    history = {"i0", "i1", "i2", "i9", "s1"}
    assert len(recs["items"]) == 5 and not history & {r["item_id"] for r in recs["items"]}
    scores = [r["score"] for r in recs["items"]]
    assert scores == sorted(scores, reverse=True)
    # The worker computed the person's interests in the same batch: weights sum to one, items are events.
    assert shown["interests"] and abs(sum(i["weight"] for i in shown["interests"]) - 1.0) < 1e-3
    assert all(set(i["items"]) <= history for i in shown["interests"])
    diverse = cli("recommend", "u9", "-k", "5", "--diverse")
    assert len(diverse["items"]) == 5 and not history & {r["item_id"] for r in diverse["items"]}
    assert {r["interest"] for r in diverse["items"]} <= set(range(1, len(shown["interests"]) + 1))


def test_poison_message_goes_to_the_dlq_while_the_rest_flows(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry, topic_partitions=1)
    ensure_topics(settings, worker_topics(settings))
    producer = KafkaProducer(**kafka_python_options(settings))
    topic = next(t for t in settings.raw_topics() if t.endswith("events.web.click"))
    now = int(time.time() * 1000)
    producer.send(topic, key=b"p", value=b'{"uid": "p1", "type": "click", "item_id": ')  # truncated JSON
    producer.send(topic, key=b"p", value=b"\xff\x00garbage")
    for i in range(20):
        value = orjson.dumps({"eid": f"g{i}", "uid": "p1", "type": "click", "item_id": f"i{i}", "ts": now - i})
        producer.send(topic, key=b"p", value=value)
    producer.flush()
    with WorkerProcess(settings, tmp_path):
        wait_until(lambda: getattr(scan(settings, version)["profiles"].get("p1"), "event_count", 0) == 20, 60,
                   what="good events behind the poison applied")
    consumer = KafkaConsumer(settings.dlq_topic, **kafka_python_options(settings), auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, group_id=None)
    dead = [(m.value, headers_dict(m.headers)) for m in consumer]
    consumer.close()
    assert [h["error_class"] for _, h in dead] == ["not_json", "not_utf8"]
    assert dead[0][0] == b'{"uid": "p1", "type": "click", "item_id": '
    assert dead[0][1]["source_topic"] == topic and dead[0][1]["source_offset"] == "0"
    assert "invalid byte 0xff" in dead[1][1]["error_message"]


def test_worker_writes_to_cassandra_over_the_cql_protocol(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path, cql_server: Any
) -> None:
    """The same pipeline with ``cassandra://`` pointing at the in-process CQL server."""
    import json
    import subprocess
    import sys

    from testkit.cqlserver.fixtures import CQL_PASSWORD, CQL_USER, unique_keyspace
    from testkit.helpers import settings_env

    registry, version = model_registry
    settings = make_settings(
        registry=registry, store_url=cql_server.url(unique_keyspace(), dc="datacenter1"),
        cassandra_username=CQL_USER, cassandra_password=CQL_PASSWORD, cassandra_replication="datacenter1:1",
    )
    init = subprocess.run([sys.executable, "-m", "interest.cli", "store", "init", "--dim", "64"],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    traffic = SyntheticTraffic(load_adapters(), users=25, items=200, seed=21)
    produced = list(traffic.events(300, int(time.time() * 1000) - 3_600_000, step_ms=100))
    oracle = expected_profiles(produced)
    with WorkerProcess(settings, tmp_path, name="cassandra-worker") as worker:
        produce_events(settings, produced)

        def done() -> bool:
            profiles = scan(settings, version)["profiles"]
            return {p: r.event_count for p, r in profiles.items()} == {p: e.count for p, e in oracle.items()}

        wait_until(done, 90, interval=1.0, what="cassandra profiles match the oracle")
        assert worker.get("/ready")[0] == 200
    snap = scan(settings, version)
    for person, exp in oracle.items():
        assert set(snap["profiles"][person].platforms) == exp.platforms
    assert cql_server.stats.misrouted == 0, "token-aware routing sent every request to a replica"

    # `interest similar` runs the nearest-people query against the CQL server.
    person = max(oracle, key=lambda p: oracle[p].count)
    proc = subprocess.run([sys.executable, "-m", "interest.cli", "similar", person, "-k", "3", "--json"],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["people"]
    assert len(found) == 3 and person not in {f["person_id"] for f in found}
    assert all(f["person_id"] in oracle for f in found)
