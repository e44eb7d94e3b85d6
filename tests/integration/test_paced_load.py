"""The freshness bench's load generator against the real broker: every record once, where a Kafka client
would put it, paced, and never dropped silently."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from bench.load import PacedLoad
from schemas.settings import Settings
from streams.kafka_config import ensure_topics, kafka_python_options

Read = tuple[str, int, bytes, bytes]  # topic, partition, key, value


def _read_all(settings: Settings, topics: list[str], partitions: int, expect: int) -> list[Read]:
    consumer = KafkaConsumer(**kafka_python_options(settings), enable_auto_commit=False, consumer_timeout_ms=2000)
    parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got: list[Read] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got.extend((tp.topic, tp.partition, r.key, r.value) for r in records)
    finally:
        consumer.close()
    return got


def test_paced_load_delivers_every_record_once_on_the_keys_partition(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    topics = settings.raw_topics()[:3]
    ensure_topics(settings, {t: settings.topic_partitions for t in topics})
    counter = iter(range(10**9))
    every_due: list[float] = []
    batches_per_tick: list[int] = []

    def make(due_ms: list[float]) -> list[tuple[str, bytes, bytes]]:
        # Paced: nothing is made before it falls due, and due times are spaced 1/rate apart, in order.
        assert due_ms == sorted(due_ms) and due_ms[-1] <= time.time() * 1000 + 1, "due times are past, in order"
        every_due.extend(due_ms)
        out = []
        for _ in due_ms:
            n = next(counter)
            out.append((topics[n % len(topics)], f"person-{n % 37}".encode(), f"event-{n}".encode()))
        # one record batch per (topic, partition) this tick touches (the records are far below a batch's size)
        batches_per_tick.append(len({(t, (murmur2(k) & 0x7FFFFFFF) % settings.topic_partitions) for t, k, _ in out}))
        return out

    rate, seconds = 1500.0, 1.5
    load = PacedLoad(settings, "test-load")
    sent, _, first_ms = asyncio.run(load.run(rate, seconds, make))
    assert sent == int(rate * seconds) == len(every_due) and every_due[0] == first_ms
    gaps = [b - a for a, b in zip(every_due, every_due[1:], strict=False)]
    assert min(gaps) == pytest.approx(1000 / rate, abs=1e-3) and max(gaps) == pytest.approx(1000 / rate, abs=1e-3)
    got = _read_all(settings, topics, settings.topic_partitions, sent)
    values = Counter(v for *_, v in got)
    assert len(got) == sent and set(values.values()) == {1}, "every record exactly once"
    assert values.keys() == {f"event-{n}".encode() for n in range(sent)}
    assert load.record_batches == sum(batches_per_tick) < sent  # what the broker keeps: a batch per partition a tick
    for topic, partition, key, value in got:
        n = int(value.split(b"-")[1])
        assert topic == topics[n % len(topics)] and key == f"person-{n % 37}".encode()
        # kafka-python's (and the Java client's) choice for a keyed record, as `interest produce` sends it
        assert partition == (murmur2(key) & 0x7FFFFFFF) % settings.topic_partitions


def test_a_record_over_the_request_limit_is_an_error_not_a_gap(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    topic = settings.raw_topics()[0]
    ensure_topics(settings, {topic: settings.topic_partitions})
    huge = b"x" * (5 * 1024 * 1024)  # over the load's 4 MiB request limit
    with pytest.raises(ValueError, match="over the 4194304-byte produce request limit"):
        asyncio.run(PacedLoad(settings, "test-load").run(100.0, 1.0, lambda due_ms: [(topic, b"k", huge)]))


def test_a_failed_delivery_stops_the_load() -> None:
    """A delivery error surfaces when its future settles, not after the run as a missing count."""
    from bench.load import _settled

    async def go() -> None:
        loop = asyncio.get_running_loop()
        ok, bad, waiting = loop.create_future(), loop.create_future(), loop.create_future()
        ok.set_result(None)
        assert _settled({ok, waiting}) == {waiting}
        bad.set_exception(RuntimeError("MessageSizeTooLarge"))
        with pytest.raises(RuntimeError, match="MessageSizeTooLarge"):
            _settled({bad, waiting})

    asyncio.run(go())
