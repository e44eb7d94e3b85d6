"""Kafka-side operations used by the CLI: forget notifications and the DLQ tools."""

from __future__ import annotations

import base64
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from interest.produce import make_producer
from schemas.records import (
    ForgetRequest,
    PersonRecord,
    decode_envelope,
    encode_envelope,
    group_by_partition,
    person_partition,
)
from schemas.settings import Settings
from streams.dlq import headers_dict
from streams.kafka_config import kafka_consumer

REPLAY_GROUP = "interest-dlq-replay"


def notify_forget(settings: Settings, person_id: str, erased_ms: int) -> bool:
    """Send a forget record to the person's partition so its owner drops cached state."""
    try:
        producer = make_producer(settings, max_block_ms=5000)
    except Exception:
        return False
    try:
        part = person_partition(person_id, settings.person_partitions)
        fut = producer.send(settings.person_topic, value=encode_envelope([ForgetRequest(person_id, erased_ms)]),
                            partition=part)
        fut.get(timeout=10)
        return True
    except Exception:
        return False
    finally:
        producer.close()


def _dlq_consumer(settings: Settings, group: str | None) -> KafkaConsumer:
    consumer = kafka_consumer(settings, group_id=group, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    parts = consumer.partitions_for_topic(settings.dlq_topic) or set()
    consumer.assign([TopicPartition(settings.dlq_topic, p) for p in sorted(parts)])
    return consumer


def read_dlq(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    consumer = _dlq_consumer(settings, None)
    consumer.seek_to_beginning()
    out = []
    try:
        for msg in consumer:
            headers = headers_dict(msg.headers)
            out.append({"offset": msg.offset, **headers,
                        "raw": msg.value.decode("utf-8", errors="backslashreplace") if msg.value else "",
                        "raw_b64": base64.b64encode(msg.value or b"").decode()})
            if len(out) >= limit:
                break
    finally:
        consumer.close()
    return out


def _person_groups(settings: Settings, source: str, value: bytes | None) -> dict[int, list[PersonRecord]]:
    """Records of a person-topic DLQ message by their person's partition; empty for other topics or bad bytes."""
    if source != settings.person_topic or not value:
        return {}
    try:
        return group_by_partition(decode_envelope(value), settings.person_partitions)
    except Exception:
        return {}


def replay_dlq(settings: Settings, reason: str | None = None, limit: int | None = None,
               dry_run: bool = False) -> dict[str, Any]:
    """Re-produce DLQ records to their source topics; progress is a committed group offset.

    Running it twice does not inject twice: the replay group's offsets move
    past what was replayed.  Records from the internal person topic are
    replayed there too (the update stage dedupes by event id).
    """
    consumer = _dlq_consumer(settings, REPLAY_GROUP)
    producer = None if dry_run else make_producer(settings)
    replayed = skipped = 0
    started_ms = int(time.time() * 1000)
    try:
        for msg in consumer:
            if msg.timestamp > started_ms:
                # Dead-lettered after this replay began (a replayed record that failed again): left for the
                # next run, else a record that still fails would cycle DLQ -> topic -> DLQ forever.
                tp = TopicPartition(msg.topic, msg.partition)
                consumer.seek(tp, msg.offset)
                consumer.pause(tp)
                if set(consumer.paused()) >= consumer.assignment():
                    break
                continue
            headers = headers_dict(msg.headers)
            if reason is not None and headers.get("error_class") != reason:
                skipped += 1
                continue
            source = headers.get("source_topic")
            if not source or headers.get("truncated") == "1":
                # A record cut to fit the DLQ is not the original: replaying it would inject a fragment.
                # Its headers keep the original's size and sha256, and its source offset, to fetch it there.
                skipped += 1
                continue
            if producer is not None:
                replay_headers = [("dlq_offset", str(msg.offset).encode())]
                groups = _person_groups(settings, source, msg.value)
                if groups:
                    # Person-topic records must land on their person's partition (one owner per person);
                    # the DLQ record has no key and its source partition is that of the failed batch.
                    for part, records in groups.items():
                        producer.send(source, value=encode_envelope(records), partition=part, headers=replay_headers)
                else:
                    producer.send(source, key=msg.key, value=msg.value, headers=replay_headers)
            replayed += 1
            if limit is not None and replayed >= limit:
                break
        if producer is not None:
            producer.flush()
            if reason is None:  # a filtered replay must not move past the records it skipped
                consumer.commit()
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
    return {"replayed": replayed, "skipped": skipped, "dry_run": dry_run}
