"""Paced single-event load for the freshness bench: one aiokafka record batch per partition per tick.

Why not the kafka-python producer that ``interest produce`` uses: the bench shares the machine's two
cores with the broker and the worker it measures, and at 2 000 events/s kafka-python's ``send`` and its
sender thread (which walks every open batch on each 1 ms linger) took 0.53 of a core (main thread 0.37,
sender 0.17, of the bench's 0.61 with the store reader).  Production clients run on other machines; CPU
the load generator burns here is CPU the worker does not get, and the tail it measures is partly its own.

Here each tick (every ``tick_s``, 5 ms: the linger Kafka's own clients default to since 4.0) appends
the events that fell due since the last one to one ``BatchBuilder`` per (topic, partition), with the
key's partition from aiokafka's murmur2 partitioner (the Java client's, cached per key), and sends the
builders at once: the produce requests a producer with that linger sends, each record still one event
message with its own key and value.  An event's produce time is when it fell due (``rate`` spaced), not
when its tick came, so the wait for the tick is part of the latency measured, as a linger would be.
Delivery futures are checked as they complete; a failed delivery stops the run with its error instead
of going uncounted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from schemas.settings import Settings

MAX_REQUEST_BYTES = 4 * 1024 * 1024
TICK_S = 0.005  # a producer's linger: what an event may wait before its produce request goes out
Record = tuple[str, bytes, bytes]  # topic, key, value
# The wall-clock ms at which each of the next records fell due -> those records, in order (it may make fewer).
Due = Callable[[list[float]], list[Record]]


class PacedLoad:
    """``await PacedLoad(settings, client_id).run(rate, seconds, make)`` sends ``rate`` records a second."""

    def __init__(self, settings: Settings, client_id: str, tick_s: float = TICK_S, max_per_tick: int = 1000) -> None:
        self.settings = settings
        self.client_id = client_id
        self.tick_s = tick_s
        self.max_per_tick = max_per_tick
        self.record_batches = 0  # produce-request batches sent: the objects the embedded broker keeps per batch
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}

    async def run(self, rate: float, seconds: float, make: Due) -> tuple[int, float, float]:
        """Send ``int(rate * seconds)`` records at ``rate``; returns how many were delivered (all, or it raises),
        the seconds from the first send to the last delivery, and the wall-clock ms the first tick began
        (the producer's start is not counted)."""
        from aiokafka import AIOKafkaProducer

        from streams.raw_reader import aiokafka_options

        producer = AIOKafkaProducer(**aiokafka_options(self.settings), client_id=self.client_id, acks=1,
                                    max_request_size=MAX_REQUEST_BYTES)
        await producer.start()
        pending: set[asyncio.Future[Any]] = set()
        sent = 0
        try:
            started, wall0 = time.monotonic(), time.time() * 1000
            total, ticks = int(rate * seconds), 0
            while sent < total:
                elapsed = time.monotonic() - started
                due = min(total if elapsed >= seconds else int(rate * elapsed), sent + self.max_per_tick) - sent
                if due > 0:
                    records = make([wall0 + 1000 * (sent + i) / rate for i in range(due)])
                    pending |= await self._send(producer, records)
                    sent += len(records)
                    pending = _settled(pending)
                ticks += 1  # the next tick on the clock, however long this one's work took
                await asyncio.sleep(max(0.0, started + ticks * self.tick_s - time.monotonic()))
            await producer.flush()
            for future in pending:
                await future  # raises the first delivery error
            took = time.monotonic() - started
        finally:
            await producer.stop()
        return sent, took, wall0

    async def _send(self, producer: Any, records: list[Record]) -> set[asyncio.Future[Any]]:
        builders: dict[tuple[str, int], Any] = {}
        futures: set[asyncio.Future[Any]] = set()
        for topic, key, value in records:  # refused before any of the tick's records is sent
            if len(key) + len(value) > MAX_REQUEST_BYTES:
                raise ValueError(f"a record of {len(key) + len(value)} bytes for {topic} is over the "
                                 f"{MAX_REQUEST_BYTES}-byte produce request limit")
        for topic, key, value in records:
            where = (topic, await self._partition(producer, topic, key))
            builder = builders.get(where)
            if builder is None:
                builder = builders[where] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                futures.add(await producer.send_batch(builder, where[0], partition=where[1]))
                self.record_batches += 1
                builder = builders[where] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)  # a fresh batch takes any first record
        for (topic, partition), builder in builders.items():
            futures.add(await producer.send_batch(builder, topic, partition=partition))
        self.record_batches += len(builders)
        return futures

    async def _partition(self, producer: Any, topic: str, key: bytes) -> int:
        cached = self._partition_of.get((topic, key))
        if cached is not None:
            return cached
        from aiokafka.partitioner import DefaultPartitioner

        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(await producer.partitions_for(topic))
        part = self._partition_of[(topic, key)] = int(DefaultPartitioner()(key, partitions, partitions))
        return part


def _settled(pending: set[asyncio.Future[Any]]) -> set[asyncio.Future[Any]]:
    """The futures still in flight; a delivered-with-error one raises here, at once."""
    left = set()
    for future in pending:
        if future.done():
            future.result()
        else:
            left.add(future)
    return left
