"""Oversized input against a real worker: nothing wedges the ingest partition.

What a user relies on: a tracker that sends huge attributes, a batching
tracker whose ~1 MB message expands past the producer's 1 MB request limit,
JSON nested deeper than any parser allows, or bytes that are not UTF-8, costs
exactly those inputs (each in the DLQ with its own reason, a too-large raw
copy cut to a prefix named by its size and digest) while every good event
around them reaches the store and the worker keeps up.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from interest.produce import make_producer
from schemas.adapters import load_adapters
from schemas.normalize import MAX_MESSAGE_BYTES, Normalizer
from schemas.records import encode_envelope, person_partition
from streams.dlq import DLQ_MAX_BYTES
from streams.kafka_config import ensure_topics, worker_topics
from testkit.chaos import dlq
from testkit.helpers import WorkerProcess, scan, wait_until

NOW = int(time.time() * 1000)


def web(eid: str, uid: str, **extra: Any) -> dict[str, Any]:
    return {"eid": eid, "uid": uid, "type": "click", "item_id": f"i-{eid}", "ts": NOW - 60_000, **extra}


def same_partition_people(count: int, partitions: int) -> list[str]:
    """People whose records all land on one person partition: their envelopes can only be split by bytes."""
    people = [f"big-{i}" for i in range(200)]
    target = person_partition(people[0], partitions)
    return [p for p in people if person_partition(p, partitions) == target][:count]


def big_batch(people: list[str]) -> tuple[bytes, Counter[str]]:
    """One raw envelope just under 1 MiB of events with ~2.3 KB attributes each."""
    events: list[dict[str, Any]] = []
    while True:
        item = web(f"b{len(events)}", people[len(events) % len(people)], page="p" * 2300)
        if len(orjson.dumps({"events": [*events, item]})) > 1_000_000:
            break
        events.append(item)
    return orjson.dumps({"events": events}), Counter(e["uid"] for e in events)


# None: Faust's default producer limit (1,000,000 bytes), which byte-split envelopes fit.  300,000: a producer
# (Faust reads PRODUCER_MAX_REQUEST_SIZE from the environment) that refuses envelopes and DLQ records the worker
# thought fine, so the real aiokafka MessageSizeTooLargeError must be split or cut instead of retried forever.
@pytest.mark.timeout(180)
@pytest.mark.parametrize("producer_limit", [None, 300_000], ids=["default-limit", "300kB-producer-limit"])
def test_oversized_input_is_dead_lettered_and_the_worker_keeps_up(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path, producer_limit: int | None
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry, topic_partitions=1, batch_size=500)
    ensure_topics(settings, worker_topics(settings))
    topic = next(t for t in settings.raw_topics() if t.endswith("events.web.click"))

    people = same_partition_people(3, settings.person_partitions)
    batch, big_counts = big_batch(people)
    assert len(batch) < MAX_MESSAGE_BYTES
    canonical = Normalizer(load_adapters()).decode(batch, "web", "click").events
    assert len(canonical) == sum(big_counts.values()) and len(encode_envelope(canonical[:500])) > 1_000_000, \
        "precondition: a 500-record envelope of this message is over the producer's 1 MB limit"
    huge_referrer = orjson.dumps(web("h2", "huge-2", referrer="r" * 900_000))
    bad: list[tuple[str, bytes]] = [
        ("attributes_too_large", orjson.dumps(web("h1", "huge-1", page="x" * 100_000))),
        ("attributes_too_large", huge_referrer),  # its DLQ copy is over the DLQ budget: cut
        ("too_deep", b"[" * 5000 + b"]" * 5000),
        ("attributes_too_deep", b'{"eid":"d1","uid":"deep","type":"click","item_id":"i","ts":%d,"page":%s}'
         % (NOW - 60_000, b'{"n":' * 600 + b"1" + b"}" * 600)),
        ("not_utf8", b"\xff\xfe\x00{" + b"\x80" * 1000),
    ]
    good = {f"good-{i}": [web(f"g{i}-{j}", f"good-{i}") for j in range(5)] for i in range(8)}

    producer = make_producer(settings)
    sent = []
    for i, (_, raw) in enumerate(bad):  # interleaved: good, bad, good, the big batch, ...
        for person in list(good)[i::len(bad)]:
            for value in good[person]:
                sent.append(producer.send(topic, key=person.encode(), value=orjson.dumps(value)))
        sent.append(producer.send(topic, key=b"bad", value=raw))
        if i == 1:
            sent.append(producer.send(topic, key=b"big", value=batch))
    producer.flush()
    assert all(f.succeeded() for f in sent), "the broker took every message"

    expected = {**{p: len(v) for p, v in good.items()}, **big_counts}
    env = {"PRODUCER_MAX_REQUEST_SIZE": str(producer_limit)} if producer_limit else {}
    with WorkerProcess(settings, tmp_path, name="oversized", **env) as worker:

        def counts() -> dict[str, int]:
            profiles = scan(settings, version)["profiles"]
            return {p: getattr(profiles.get(p), "event_count", 0) for p in expected}

        wait_until(lambda: counts() == expected, 60, interval=1.0, what="every good event applied")
        wait_until(lambda: len(dlq(settings)) >= len(bad), 30, interval=1.0, what="every bad message dead-lettered")
        # Caught up, not wedged: an event produced now is applied within seconds.
        producer.send(topic, key=b"late", value=orjson.dumps(web("late1", "late"))).get(timeout=10)
        started = time.monotonic()
        wait_until(lambda: getattr(scan(settings, version)["profiles"].get("late"), "event_count", 0) == 1, 20,
                   interval=0.5, what="an event produced after the oversized ones")
        catch_up_s = time.monotonic() - started
        stopped = time.monotonic()
        rc = worker.stop(timeout=20)
        stop_s = time.monotonic() - stopped
        log = worker.logs()
    producer.close()
    assert ("refused as too large" in log) == (producer_limit is not None), "the refusal path ran iff it had to"

    dead = dlq(settings)
    assert sorted(d["error_class"] for d in dead) == sorted(reason for reason, _ in bad)
    assert all(d["source_topic"] == topic and d["error_message"] for d in dead)
    too_large = sorted((d for d in dead if d["error_class"] == "attributes_too_large"),
                       key=lambda d: int(d["source_offset"]))
    assert "16384-byte limit" in too_large[0]["error_message"] and "'page'" in too_large[0]["error_message"]
    assert "truncated" not in too_large[0], "a DLQ copy within budget is kept whole"
    cut = too_large[1]
    kept = base64.b64decode(cut["raw_b64"])
    budget = DLQ_MAX_BYTES if producer_limit is None else DLQ_MAX_BYTES // 2  # cut again when refused
    assert cut["truncated"] == "1" and len(kept) == budget and huge_referrer.startswith(kept)
    assert int(cut["original_size"]) == len(huge_referrer)
    assert cut["original_sha256"] == hashlib.sha256(huge_referrer).hexdigest()
    assert catch_up_s < 15 and rc != -signal.SIGKILL and stop_s < 20, (catch_up_s, rc, stop_s)
