"""Routing by person and the internal person-topic record format.

Why explicit partitions: the raw topics are keyed by platform user id, so one
person's events arrive on many partitions.  The ingest agent re-keys every
event by canonical person id and sends it to partition
``murmur2(person) % P`` of the person topic (the same partitioner Kafka's
Java client uses for keyed messages, so other tools can produce there too).
Exactly one worker owns a partition at a time, hence exactly one worker owns
a person.  To keep Kafka's per-message cost off the hot path, one message
carries all records of one batch for one partition (an envelope).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import orjson
from kafka.partitioner.default import murmur2

from schemas.events import CanonicalEvent, IdentityLink

# Record kinds inside a person-topic envelope.
EVENT = "e"
LINK = "l"
FORGET = "f"


# Largest envelope in records: ~200 bytes each keeps one message far below the
# producer's 1 MB max_request_size however large the raw messages' envelopes are.
ENVELOPE_MAX_RECORDS = 500


@functools.lru_cache(maxsize=1 << 16)
def _murmur(person_id: str) -> int:
    return murmur2(person_id.encode("utf-8")) & 0x7FFFFFFF


def person_partition(person_id: str, partitions: int) -> int:
    """Kafka-compatible partition of a person id.

    kafka-python's murmur2 is pure Python (~5 µs); the hot path asks for the
    same active people again and again, so recent ids are cached.
    """
    return _murmur(person_id) % partitions


def event_record(event: CanonicalEvent) -> dict[str, Any]:
    return {"k": EVENT, **event.to_dict()}


def link_record(link: IdentityLink) -> dict[str, Any]:
    return {"k": LINK, **link.to_dict()}


def forget_record(person_id: str, erased_ms: int) -> dict[str, Any]:
    return {"k": FORGET, "person_id": person_id, "erased_ms": erased_ms}


def record_owner(record: dict[str, Any]) -> str:
    """The person id whose partition must process this record.

    A link is processed by the owner of the anonymous id: it is the only
    worker that writes that id's state, so moving the state cannot race
    with new events for the device.
    """
    if record["k"] == LINK:
        return f"anon:{record['platform']}:{record['device_id']}"
    return str(record["person_id"])


def encode_envelope(records: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"r": records})


def envelopes(groups: dict[int, list[dict[str, Any]]],
              max_records: int = ENVELOPE_MAX_RECORDS) -> Iterator[tuple[int, bytes]]:
    """(partition, envelope) pairs, each envelope holding at most ``max_records`` records.

    Why a cap: a batch of raw envelopes can hold 100k events; one person-topic
    message per partition would exceed the broker's message size and could
    never be sent.
    """
    for part, records in groups.items():
        for start in range(0, len(records), max_records):
            yield part, encode_envelope(records[start : start + max_records])


def decode_envelope(raw: bytes) -> list[dict[str, Any]]:
    value = orjson.loads(raw)
    records = value["r"]
    if not isinstance(records, list):
        raise ValueError("person-topic envelope: 'r' must be a list")
    return records


def group_by_partition(records: list[dict[str, Any]], partitions: int) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        out.setdefault(person_partition(record_owner(record), partitions), []).append(record)
    return out


def topic_platform_action(topic: str) -> tuple[str, str | None]:
    """``[prefix.]events.<platform>.<action>`` -> (platform, action or None)."""
    parts = topic.split(".")
    if len(parts) < 3:
        return "", None
    action = parts[-1] if parts[-1] in ("click", "browse", "purchase") else None
    return parts[-2], action
