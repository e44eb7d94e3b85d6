"""The person-topic record: what the ingest stage sends the owner of a person, and its one codec.

Why explicit partitions: the raw topics are keyed by platform user id, so one
person's events arrive on many partitions.  The ingest stage re-keys every
record by its owner and sends it to partition ``murmur2(owner) % P`` of the
person topic (the same partitioner Kafka's Java client uses for keyed
messages, so other tools can produce there too).  Exactly one worker owns a
partition at a time, hence exactly one worker owns a person.  To keep
Kafka's per-message cost off the hot path, one message carries many records
(an envelope): ``{"r": [{"k": "e" | "l" | "f", ...}, ...]}``.

A record is one of three typed values: a ``CanonicalEvent``, an
``IdentityLink`` or a ``ForgetRequest``.  ``encode_envelope`` and
``decode_envelope`` are the only places that know the wire form.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kafka.partitioner.default import murmur2

from schemas.events import CanonicalEvent, IdentityLink, anon_person_id


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """"Erase this person as of ``erased_ms``": tells the owner to drop what it caches."""

    person_id: str
    erased_ms: int


PersonRecord = CanonicalEvent | IdentityLink | ForgetRequest
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One Kafka message this system writes (an envelope, a DLQ record): sent, then acknowledged."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: Headers | None = None


# Sends messages and returns once the broker acknowledged every one of them.
Send = Callable[[Sequence[OutMessage]], Awaitable[None]]

# Largest envelope in records: ~200 bytes each keeps one message far below the
# producer's 1 MB max_request_size however large the raw messages' envelopes are.
ENVELOPE_MAX_RECORDS = 500
# Largest envelope in bytes: records carry platform attributes (up to
# ``schemas.adapters.MAX_ATTRIBUTES_BYTES`` each), so a count cap alone can
# exceed Faust's producer_max_request_size (1,000,000) and the send could never
# succeed.  Half of that leaves room for headers and batch overhead.
ENVELOPE_MAX_BYTES = 512 * 1024
_ENVELOPE_OVERHEAD = len(b'{"r":[]}')

_EVENT, _LINK, _FORGET = "e", "l", "f"


@functools.lru_cache(maxsize=1 << 16)
def _murmur(person_id: str) -> int:
    return murmur2(person_id.encode("utf-8")) & 0x7FFFFFFF


def person_partition(person_id: str, partitions: int) -> int:
    """Kafka-compatible partition of a person id.

    kafka-python's murmur2 is pure Python (~5 µs); the hot path asks for the
    same active people again and again, so recent ids are cached.
    """
    return _murmur(person_id) % partitions


def record_owner(record: PersonRecord) -> str:
    """The person id whose partition must process this record.

    A link is processed by the owner of the anonymous id: it is the only
    worker that writes that id's state, so moving the state cannot race
    with new events for the device.
    """
    if isinstance(record, IdentityLink):
        return anon_person_id(record.platform, record.device_id)
    return record.person_id


def _to_wire(record: PersonRecord) -> dict[str, Any]:
    if isinstance(record, CanonicalEvent):
        return {"k": _EVENT, **record.to_dict()}
    if isinstance(record, IdentityLink):
        return {"k": _LINK, **record.to_dict()}
    return {"k": _FORGET, "person_id": record.person_id, "erased_ms": record.erased_ms}


def _from_wire(item: Any) -> PersonRecord:
    if not isinstance(item, dict):
        raise ValueError(f"person-topic record must be an object, got {type(item).__name__}")
    kind = item.get("k")
    try:
        if kind == _EVENT:
            return CanonicalEvent.from_dict(item)
        if kind == _LINK:
            return IdentityLink(str(item["platform"]), str(item["device_id"]), str(item["person_id"]),
                                int(item["ts_ms"]))
        if kind == _FORGET:
            return ForgetRequest(str(item["person_id"]), int(item["erased_ms"]))
    except KeyError as exc:
        raise ValueError(f"person-topic record of kind {kind!r} lacks field {exc.args[0]!r}") from exc
    raise ValueError(f"unknown person-topic record kind {kind!r} (expected 'e', 'l' or 'f')")


def encode_envelope(records: Iterable[PersonRecord]) -> bytes:
    return orjson.dumps({"r": [_to_wire(r) for r in records]})


def decode_envelope(raw: bytes | None) -> list[PersonRecord]:
    """Every record of one envelope; ``ValueError`` naming the problem for bytes we did not write."""
    if not raw:
        raise ValueError("empty person-topic message")
    value = orjson.loads(raw)
    if not isinstance(value, dict) or not isinstance(value.get("r"), list):
        raise ValueError("person-topic envelope: 'r' must be a list")
    return [_from_wire(item) for item in value["r"]]


def group_by_partition(records: Iterable[PersonRecord], partitions: int) -> dict[int, list[PersonRecord]]:
    out: dict[int, list[PersonRecord]] = {}
    for record in records:
        out.setdefault(person_partition(record_owner(record), partitions), []).append(record)
    return out


def envelopes(records: Sequence[PersonRecord], partitions: int, max_records: int = ENVELOPE_MAX_RECORDS,
              max_bytes: int = ENVELOPE_MAX_BYTES) -> Iterator[tuple[int, bytes]]:
    """(partition, envelope) pairs for ``records``: at most ``max_records`` long and ``max_bytes`` large.

    Why both caps: a batch of raw envelopes can hold 100k events, and records
    carry attributes of up to 16 KiB; one person-topic message per partition,
    or 500 large records in one, would exceed the producer's request size and
    could never be sent.  Order within a partition is kept.  The one exception
    to ``max_bytes``: a record that alone exceeds it is yielded alone (it cannot
    be split); callers check ``len(envelope) > max_bytes`` for that case.
    """
    for part, group in group_by_partition(records, partitions).items():
        for start in range(0, len(group), max_records):
            chunk = group[start : start + max_records]
            env = encode_envelope(chunk)
            if len(env) <= max_bytes:  # the common case: encoded once, as before
                yield part, env
            else:
                for packed in _pack(chunk, max_bytes):
                    yield part, packed


def _pack(records: Sequence[PersonRecord], max_bytes: int) -> Iterator[bytes]:
    """Envelopes of consecutive ``records``, each as full as ``max_bytes`` allows (byte-identical to
    ``encode_envelope``: orjson writes no whitespace, so an envelope is its records joined by commas)."""
    parts: list[bytes] = []
    size = _ENVELOPE_OVERHEAD
    for record in records:
        item = orjson.dumps(_to_wire(record))
        extra = len(item) + (1 if parts else 0)
        if parts and size + extra > max_bytes:
            yield b'{"r":[' + b",".join(parts) + b"]}"
            parts, size, extra = [], _ENVELOPE_OVERHEAD, len(item)
        parts.append(item)
        size += extra
    if parts:
        yield b'{"r":[' + b",".join(parts) + b"]}"
