"""Model announcements on ``interest.models`` and the worker's watcher.

Every worker must hear every announcement, so the watcher is not a member of
the worker's consumer group (a group would hand each message to one worker
only): it reads the topic's partitions by assignment, starting at the end.
An announcement says "look at the registry again"; the registry's
``PROMOTED`` pointer stays the single source of truth, so a promote, a
rollback and a missed message all converge on the same version.  A periodic
registry check (``model_check_interval_s``) covers workers that were
disconnected when the announcement went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from schemas.settings import Settings
from streams.kafka_config import ensure_topics, kafka_consumer, kafka_producer

log = logging.getLogger(__name__)


def announce(settings: Settings, version: str, action: str, extra: dict[str, Any] | None = None,
             timeout_s: float = 10.0) -> None:
    """Tell every worker that ``version`` was promoted (``action``: publish/promote/rollback).

    Raises when the broker did not acknowledge; callers report that workers
    will still pick the version up at their next registry check.
    """
    body = {"version": version, "action": action, "at_ms": int(time.time() * 1000), **(extra or {})}
    ensure_topics(settings, {settings.models_topic: 1})  # a trainer may publish before any worker made it
    producer = kafka_producer(settings, request_timeout_ms=int(timeout_s * 1000), max_block_ms=int(timeout_s * 1000))
    try:
        producer.send(settings.models_topic, key=version.encode(), value=orjson.dumps(body)).get(timeout=timeout_s)
    finally:
        producer.close(timeout=timeout_s)


def decode_announcement(raw: bytes | None) -> dict[str, Any] | None:
    """The announcement's JSON object, or None (logged) for anything else."""
    try:
        body = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        log.warning("ignoring malformed model announcement: %r", (raw or b"")[:200])
        return None
    return body


class AnnouncementReader:
    """Blocking reader of the models topic (all partitions, from the end); run it in a thread."""

    def __init__(self, settings: Settings) -> None:
        from kafka import TopicPartition

        self._consumer = kafka_consumer(settings, group_id=None, consumer_timeout_ms=1000)
        parts = self._consumer.partitions_for_topic(settings.models_topic) or {0}
        self._consumer.assign([TopicPartition(settings.models_topic, p) for p in sorted(parts)])
        self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            # Resolve "end" now, so nothing announced later is skipped; bounded, so a broker that
            # vanishes here makes the watcher retry instead of hanging (and the registry check with it).
            if self._consumer.position(tp, timeout_ms=10_000) is None:
                self.close()
                raise TimeoutError(f"no offset for {tp.topic}[{tp.partition}] within 10s")

    def poll(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        found = []
        for records in batches.values():
            for record in records:
                body = decode_announcement(record.value)
                if body is not None:
                    found.append(body)
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()


async def watch_models(settings: Settings, refresh: Callable[[], Awaitable[bool]],
                       stopping: Callable[[], bool]) -> None:
    """Refresh the model on every announcement and every ``model_check_interval_s``.

    Never raises (except cancellation): a broker hiccup only delays the next
    announcement; the periodic registry check still runs.
    """
    reader: AnnouncementReader | None = None
    next_check = time.monotonic() + settings.model_check_interval_s
    try:
        while not stopping():
            announced: list[dict[str, Any]] = []
            try:
                if reader is None:
                    reader = await asyncio.to_thread(AnnouncementReader, settings)
                    await refresh()  # anything promoted before the reader was positioned
                announced = await asyncio.to_thread(reader.poll, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("model announcements unavailable (%s); relying on the registry check", exc)
                if reader is not None:
                    await asyncio.to_thread(reader.close)
                    reader = None
                await asyncio.sleep(min(5.0, settings.model_check_interval_s))
            for body in announced:
                log.info("model announcement: %s %s", body.get("action"), body["version"])
            if announced or time.monotonic() >= next_check:
                next_check = time.monotonic() + settings.model_check_interval_s
                try:
                    await refresh()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("model refresh failed; still serving the current version")
    finally:
        if reader is not None:
            await asyncio.to_thread(reader.close)
