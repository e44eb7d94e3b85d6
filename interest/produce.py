"""Producing raw platform events to ``events.<platform>.<action>`` topics.

Messages are keyed by the platform user id (the logged-in id, else the
device id), as trackers do.  ``envelope > 1`` packs that many events of one
topic and key-partition into one message, as batching trackers do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from kafka import KafkaProducer

from interest.synthetic import RawEvent
from schemas.settings import Settings
from streams.kafka_config import ensure_topics, input_topics, kafka_producer


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    opts: dict[str, Any] = {
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "client_id": "interest-produce",
    }
    return kafka_producer(settings, **{**opts, **overrides})


class RateLimiter:
    """Sleeps so that ``tick()`` is called at most ``rate`` times per second."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.count = 0

    def tick(self, n: int = 1) -> None:
        self.count += n
        if not self.rate:
            return
        ahead = self.count / self.rate - (time.monotonic() - self.start)
        if ahead > 0.001:
            time.sleep(ahead)


def _batched(items: Iterable[RawEvent], size: int) -> Iterator[list[RawEvent]]:
    """Group consecutive events by (topic, key) into envelopes of ``size``."""
    pending: dict[tuple[str, str], list[RawEvent]] = {}
    for item in items:
        group = pending.setdefault((item.topic, item.key), [])
        group.append(item)
        if len(group) >= size:
            yield group
            del pending[(item.topic, item.key)]
    yield from pending.values()


def raw_topic_map(settings: Settings) -> dict[str, str]:
    """``events.<platform>.<action>`` -> the configured topic name (which may carry a prefix)."""
    return {".".join(t.split(".")[-3:]): t for t in settings.raw_topics()}


def produce_events(
    settings: Settings,
    events: Iterable[RawEvent | tuple[str, dict[str, Any]]],
    rate: float | None = None,
    envelope: int = 1,
    on_progress: Callable[[int], None] | None = None,
    producer: KafkaProducer | None = None,
    stamp_now: bool = False,
) -> int:
    """Send events (and identity links) and flush; returns the number of events sent.

    ``stamp_now`` rewrites nothing in the payload but adds a ``produced_ms``
    header, which the freshness benchmark reads.
    """
    ensure_topics(settings, input_topics(settings))
    topic_of = raw_topic_map(settings)
    own = producer is None
    prod = producer or make_producer(settings)
    limiter = RateLimiter(rate)
    sent = 0
    raw_buffer: list[RawEvent] = []

    def flush_buffer() -> None:
        nonlocal sent
        for group in _batched(raw_buffer, envelope):
            first = group[0]
            value = (
                orjson.dumps(first.value) if len(group) == 1 else orjson.dumps({"events": [g.value for g in group]})
            )
            headers = [("produced_ms", str(int(time.time() * 1000)).encode())] if stamp_now else None
            prod.send(topic_of.get(first.topic, first.topic), key=first.key.encode(), value=value, headers=headers)
            sent += len(group)
            limiter.tick(len(group))
            if on_progress:
                on_progress(len(group))
        raw_buffer.clear()

    try:
        for item in events:
            if isinstance(item, RawEvent):
                raw_buffer.append(item)
                if len(raw_buffer) >= max(envelope * 64, 1) or envelope == 1:
                    flush_buffer()
            else:
                flush_buffer()
                link = item[1]
                prod.send(settings.identity_topic, key=str(link["device_id"]).encode(), value=orjson.dumps(link))
        flush_buffer()
        prod.flush()
    finally:
        if own:
            prod.close()
    return sent


def raw_lines(path: str, platform: str, settings: Settings) -> Iterator[tuple[str, bytes, bytes | None]]:
    """Lines of a raw-event file as (topic, value, key) for ``--file``; bytes pass through untouched.

    The topic's action comes from the line when it parses, else ``click``: a
    bad line is still produced, so the worker's DLQ sees exactly what the
    platform sent.
    """
    from schemas.adapters import _get, load_adapters

    adapter = load_adapters().get(platform)
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            action, key = "click", None
            try:
                obj = orjson.loads(line)
                if adapter is not None and isinstance(obj, dict):
                    raw_action = _get(obj, adapter.action_field)
                    action = adapter.actions.get(str(raw_action), "click")
                    for field_path in (adapter.person_field, adapter.device_field):
                        value = _get(obj, field_path)
                        if isinstance(value, (str, int)) and not isinstance(value, bool):
                            key = str(value).encode()
                            break
            except orjson.JSONDecodeError:
                pass
            yield f"events.{platform}.{action}", line, key
