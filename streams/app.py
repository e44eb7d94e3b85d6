"""The Faust application: two agents and the worker's web endpoints.

``ingest`` consumes every ``events.<platform>.<action>`` topic and
``identity.links``, decodes raw bytes in batches, normalises them with the
platform adapters, sends what fails to the DLQ, and re-keys the rest by
person onto the person topic (one envelope per partition per batch).

``update`` consumes the person topic and runs ``ProfileUpdater``.

Both agents acknowledge a batch only after everything it produced (envelopes,
DLQ records, store writes) was acknowledged downstream, and neither lets an
exception escape its loop: a crashed Faust agent leaves the worker stuck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.adapters import load_adapters
from schemas.events import Rejected
from schemas.normalize import Normalizer, decode_link
from schemas.settings import Settings
from streams import faults, faust_tuning, metrics
from streams.dlq import dlq_headers
from streams.model_holder import ModelHolder
from streams.model_watch import watch_models
from streams.routing import (
    decode_envelope,
    encode_envelope,
    envelopes,
    event_record,
    group_by_partition,
    link_record,
    person_partition,
    topic_platform_action,
)
from streams.stores.base import StoreUnavailable
from streams.stores.factory import open_store
from streams.updater import BatchReport, ProfileUpdater, Record

log = logging.getLogger("interest.worker")


class WorkerContext:
    """State shared by the agents of one worker process."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.normalizer = Normalizer(load_adapters())
        self.platforms = set(self.normalizer.adapters)
        self.store = open_store(settings)
        self.model = ModelHolder(settings, lambda: self.store.vector_dim)
        self.updater = ProfileUpdater(
            self.store, self.model.current, self.forward, settings.seq_len,
            lambda person: person_partition(person, settings.person_partitions),
        )
        self.ready = asyncio.Event()
        self.positions: dict[tuple[str, int], int] = {}
        self.stats: dict[str, Any] = {"events_in": 0, "rejected": 0, "people_updated": 0, "batches": 0,
                                      "last_batch": 0, "started": time.time()}
        self.freshness: deque[float] = deque(maxlen=5000)

    async def start(self) -> None:
        await self.model.load()
        if self.settings.store_url.startswith("sqlite:"):
            # The embedded store needs no set-up step; Cassandra needs `interest store init`.
            runtime = self.model.current()
            await self.store.init_schema(runtime.dim if runtime is not None else 64)
        else:
            await self.store.open()
        self.ready.set()

    async def send_all(self, sends: list[tuple[str, bytes | None, bytes, int | None, Any]]) -> None:
        """Produce and wait for every broker acknowledgement."""
        producer = self.app.producer
        futures = [await producer.send(topic, key, value, part, None, headers)
                   for topic, key, value, part, headers in sends]
        if futures:
            await asyncio.gather(*futures)

    async def forward(self, records: list[Record]) -> None:
        groups = group_by_partition(records, self.settings.person_partitions)
        await self.send_all([(self.settings.person_topic, None, env, part, None)
                             for part, env in envelopes(groups)])

    def dead_letter(self, raw: bytes, message: Any, why: Rejected | str, error_class: str) -> tuple[Any, ...]:
        reason = why.reason if isinstance(why, Rejected) else error_class
        metrics.REJECTED.labels(reason=reason).inc()
        self.stats["rejected"] += 1
        headers = dlq_headers(message.topic, message.partition, message.offset, reason, str(why),
                              getattr(why, "index", None))
        return (self.settings.dlq_topic, message.key, raw, None, headers)

    # -- stage 1 -----------------------------------------------------------
    async def ingest_batch(self, events: list[Any]) -> None:
        records: list[Record] = []
        dlq: list[tuple[Any, ...]] = []
        identity = self.settings.identity_topic
        accepted: Counter[tuple[str, str]] = Counter()
        for event in events:
            msg = event.message
            self.positions[(msg.topic, msg.partition)] = msg.offset
            raw = msg.value if isinstance(msg.value, bytes) else event.value
            try:
                if msg.topic == identity:
                    link = decode_link(raw, self.platforms)
                    if isinstance(link, Rejected):
                        dlq.append(self.dead_letter(raw or b"", msg, link, link.reason))
                    else:
                        records.append(link_record(link))
                        metrics.LINKS_IN.inc()
                    continue
                platform, action = topic_platform_action(msg.topic)
                decoded = self.normalizer.decode(raw, platform, action)
                for canonical in decoded.events:
                    records.append(event_record(canonical))
                    accepted[(canonical.platform, canonical.action)] += 1
                for why, element in decoded.rejected:
                    dlq.append(self.dead_letter(element, msg, why, why.reason))
            except Exception as exc:  # a bug must not stop the partition: keep the bytes
                log.exception("unexpected error decoding %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                dlq.append(self.dead_letter(raw or b"", msg, f"{type(exc).__name__}: {exc}", "internal_error"))
        for (platform, action), count in accepted.items():  # one metric update per label per batch
            metrics.EVENTS_IN.labels(platform, action).inc(count)
        self.stats["events_in"] += len(records)
        groups = group_by_partition(records, self.settings.person_partitions)
        sends: list[tuple[Any, ...]] = [
            (self.settings.person_topic, None, env, part, None) for part, env in envelopes(groups)
        ]
        await self._retry_forever("ingest send", self.send_all, sends + dlq)
        metrics.BATCH_SIZE.labels("ingest").observe(len(events))

    # -- stage 2 -----------------------------------------------------------
    async def update_batch(self, events: list[Any]) -> None:
        records: list[Record] = []
        dlq: list[tuple[Any, ...]] = []
        for event in events:
            msg = event.message
            self.positions[(msg.topic, msg.partition)] = msg.offset
            try:
                records.extend(decode_envelope(msg.value))
            except Exception as exc:
                dlq.append(self.dead_letter(msg.value or b"", msg, f"bad person-topic envelope: {exc}",
                                            "bad_envelope"))
        if dlq:
            await self._retry_forever("dlq send", self.send_all, dlq)
        report = await self._update_with_retries(records, events[-1].message if events else None)
        if report is not None:
            self._observe(report, len(events))

    async def _update_with_retries(self, records: list[Record], last_msg: Any) -> BatchReport | None:
        """Retry transient store failures forever, other failures a few times, then isolate."""
        attempt = 0
        delay = self.settings.retry_backoff_ms / 1000
        cap = self.settings.retry_backoff_max_ms / 1000
        while True:
            try:
                return await self.updater.process(records)
            except StoreUnavailable as exc:
                metrics.STORE_RETRIES.inc()
                log.warning("store unavailable, not committing, retrying in %.1fs: %s", delay, exc)
            except Exception as exc:
                attempt += 1
                metrics.BATCH_FAILURES.inc()
                log.exception("batch failed (attempt %s/%s)", attempt, self.settings.retry_attempts + 1)
                if attempt > self.settings.retry_attempts:
                    return await self._isolate(records, last_msg, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    async def _isolate(self, records: list[Record], last_msg: Any, exc: Exception) -> BatchReport | None:
        """Process person by person; the people whose records keep failing go to the DLQ."""
        from streams.routing import record_owner

        by_person: dict[str, list[Record]] = {}
        for rec in records:
            by_person.setdefault(record_owner(rec), []).append(rec)
        report = None
        for person, recs in by_person.items():
            while True:
                try:
                    report = await self.updater.process(recs)
                    break
                except StoreUnavailable:
                    metrics.STORE_RETRIES.inc()
                    await asyncio.sleep(self.settings.retry_backoff_max_ms / 1000)
                except Exception as person_exc:
                    why = f"{type(person_exc).__name__}: {person_exc} (person {person})"
                    await self._retry_forever("dlq send", self.send_all,
                                              [self.dead_letter(encode_envelope(recs), last_msg, why, "update_failed")])
                    break
        return report

    async def _retry_forever(self, what: str, fn: Any, *args: Any) -> None:
        delay = self.settings.retry_backoff_ms / 1000
        while True:
            try:
                await fn(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_ms / 1000)

    def _observe(self, report: BatchReport, messages: int) -> None:
        metrics.BATCH_SIZE.labels("update").observe(messages)
        metrics.APPLIED.inc(report.merge.applied)
        metrics.DUPLICATES.inc(report.merge.duplicates)
        metrics.TOO_LATE.inc(report.merge.too_late)
        metrics.ERASED_DROPPED.inc(report.merge.erased)
        metrics.FORWARDED.inc(report.forwarded)
        metrics.PEOPLE_UPDATED.inc(len(report.written))
        if report.encoded:
            metrics.ENCODE_SECONDS.observe(report.encode_s)
        metrics.STORE_WRITE_SECONDS.observe(report.write_s)
        for ms in report.freshness_ms:
            metrics.FRESHNESS.observe(ms / 1000)
        self.freshness.extend(report.freshness_ms)
        self.stats["people_updated"] += len(report.written)
        self.stats["batches"] += 1
        self.stats["last_batch"] = report.records

    def update_lag(self) -> None:
        consumer = self.app.consumer
        # Only partitions owned now: after a rebalance a moved partition's last value would stay
        # exported forever (double-counted by sum(), a stale alert). No await in between: atomic.
        metrics.LAG.clear()
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self.positions.get((tp.topic, tp.partition))
            if high is not None:
                lag = high - (pos + 1 if pos is not None else 0)
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


def create_app(settings: Settings) -> tuple[faust.App, WorkerContext]:
    """Build the Faust app for ``settings`` (no global app: tests build many)."""
    app = faust_tuning.lean_app(settings, web_port=settings.web_port, web_bind=settings.web_host, web_enabled=True)
    ctx = WorkerContext(app, settings)
    raw_topic = app.topic(*settings.raw_topics(), settings.identity_topic,
                          key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    person_topic = app.topic(settings.person_topic, partitions=settings.person_partitions,
                             key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    within = settings.batch_wait_ms / 1000

    @app.task
    async def start_context() -> None:
        await ctx._retry_forever("store open", ctx.start)

    @app.task
    async def model_watch() -> None:
        await ctx.ready.wait()
        if settings.model_version is None:  # a pinned version never swaps
            await watch_models(settings, ctx.model.refresh, lambda: bool(app.should_stop))

    @app.agent(raw_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        await ctx.ready.wait()
        async for events in stream.take_events(settings.batch_size, within=within):
            try:
                await ctx.ingest_batch(list(events))
            except asyncio.CancelledError:
                raise
            except Exception:  # never escape: Faust would wait forever on the unacked message
                log.exception("ingest batch failed unexpectedly")

    @app.agent(person_topic, name="update")
    async def update(stream: Any) -> None:
        await ctx.ready.wait()
        async for events in stream.take_events(settings.update_batch_envelopes, within=within):
            await faults.commit_then_crash(app)  # chaos tests only: earlier batches are acked by now
            try:
                await ctx.update_batch(list(events))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("update batch failed unexpectedly")

    @app.timer(interval=5.0)
    async def lag_gauge() -> None:
        try:
            ctx.update_lag()
        except Exception:  # metrics must never kill the worker
            log.debug("lag gauge failed", exc_info=True)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        parts = [tp.partition for tp in revoked if tp.topic == settings.person_topic]
        ctx.updater.drop_partitions(parts)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = ctx.ready.is_set() and not app.rebalancing
        body = {"ready": ok, "model_version": ctx.model.version}
        return web.json(body, status=200 if ok else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        fresh = sorted(ctx.freshness)
        body = dict(ctx.stats)
        body["model_version"] = ctx.model.version
        body["freshness_p50_ms"] = fresh[len(fresh) // 2] if fresh else None
        body["freshness_p99_ms"] = fresh[int(len(fresh) * 0.99)] if fresh else None
        return web.json(body)

    app.interest_context = ctx  # type: ignore[attr-defined]
    return app, ctx
