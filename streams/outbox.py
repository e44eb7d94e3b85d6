"""Typed outgoing messages, and the one place that sends them and waits for the broker.

Why an outbox: a batch's offsets may be acknowledged only after everything it
produced (person-topic envelopes, DLQ records) was acknowledged by the
broker.  The stages collect ``OutMessage`` values; ``KafkaSender`` sends all of
them and returns only when every acknowledgement arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Rejected
from schemas.records import PersonRecord, envelopes
from streams.dlq import dlq_headers

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input message came from: what a DLQ record names."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that cannot be used, with the reason (errors as data: the stage never raises for it)."""

    raw: bytes
    source: Source
    reason: str
    message: str
    index: int | None = None

    @classmethod
    def of(cls, raw: bytes | None, source: Source, why: Rejected | str, reason: str | None = None) -> DeadLetter:
        if isinstance(why, Rejected):
            return cls(raw or b"", source, why.reason, str(why), getattr(why, "index", None))
        return cls(raw or b"", source, reason or "internal_error", why)


Send = Callable[[Sequence[OutMessage]], Awaitable[None]]


@dataclass(slots=True)
class Outbox:
    """What one batch will send: envelopes by person partition and dead letters."""

    person_topic: str
    partitions: int
    dlq_topic: str
    messages: list[OutMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def add_records(self, records: Sequence[PersonRecord]) -> None:
        for part, env in envelopes(records, self.partitions):
            self.messages.append(OutMessage(self.person_topic, env, partition=part))

    def add_dead(self, letter: DeadLetter) -> None:
        self.dead.append(letter)
        src = letter.source
        headers = dlq_headers(src.topic, src.partition, src.offset, letter.reason, letter.message, letter.index)
        self.messages.append(OutMessage(self.dlq_topic, letter.raw, key=src.key, headers=headers))


class KafkaSender:
    """Sends through a Faust app's producer and waits for every acknowledgement."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, messages: Sequence[OutMessage]) -> None:
        producer = self.app.producer
        futures = [await producer.send(m.topic, m.key, m.value, m.partition, None, m.headers) for m in messages]
        if futures:
            await asyncio.gather(*futures)
