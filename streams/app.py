"""The Faust application: the two stages and the worker's web endpoints.

``INTEREST_WORKER_STAGES`` (``all`` by default) picks the stages: ``ingest`` or
``update`` alone gives a process one stage and one event loop to itself
(``interest worker --split`` runs both that way; see ``faust_tuning.group_id``).

``ingest`` consumes every ``events.<platform>.<action>`` topic and
``identity.links``: raw bytes -> records re-keyed by person onto the person
topic, bad input -> DLQ.  With ``ingest_reader=batch`` (the default) a
``RawReader`` task reads them in its own consumer group (``streams/raw_reader.py``,
which says why); with ``faust`` a Faust agent runs ``IngestStage.consume``.

``update`` consumes the person topic with ``UpdateStage.consume``, which hands
records to ``ProfileUpdater``.  Both live in ``streams/stages.py``; this module
only wires them to Faust and serves the web pages.

Both stages acknowledge a batch only after everything it produced (envelopes,
DLQ records, store writes) was acknowledged downstream, and neither lets an
exception escape its loop: a crashed Faust agent leaves the worker stuck.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.adapters import load_adapters
from schemas.normalize import Normalizer
from schemas.settings import Settings
from streams import faust_tuning, metrics
from streams.backoff import retry_forever
from streams.model_holder import ServedModels
from streams.model_watch import watch_models
from streams.raw_reader import RawReader
from streams.stages import IngestStage, KafkaSender, UpdateStage, delivering, stage_backoff
from streams.stores.factory import open_store
from streams.updater import ProfileUpdater
from streams.worker_stats import WorkerStats

log = logging.getLogger("interest.worker")


class Worker:
    """One worker process: the store, the model, the two stages and what the web pages show."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.store = open_store(settings)
        self.models = ServedModels(settings, lambda: self.store.vector_dim)
        self.model = self.models.shared
        self.stats = WorkerStats()
        send = KafkaSender(app)
        stopping = lambda: bool(app.should_stop)  # noqa: E731  (SIGTERM: see Backoff)
        self.backoff = stage_backoff(settings, stopping)
        forward = delivering(send, settings, self.backoff, "forward to the person topic")
        self.updater = ProfileUpdater(self.store, self.model.current, forward, settings, self.model.expected,
                                      self.models.platform_runtimes)
        self.ingest = IngestStage(settings, Normalizer(load_adapters()), send, self.stats, stopping)
        self.update = UpdateStage(settings, self.updater, send, self.stats, stopping)
        self.ready = asyncio.Event()
        self.reader: RawReader | None = None  # the batch reader, when this process runs it

    async def start(self) -> None:
        if not self.settings.runs_update:  # no store and no model: raw bytes -> person topic only
            self.ready.set()
            return
        await self.models.load()
        if self.settings.store_url.startswith("sqlite:"):
            # The embedded store needs no set-up step; Cassandra needs `interest store init`.
            runtime = self.model.current()
            await self.store.init_schema(runtime.dim if runtime is not None else 64)
        else:
            await self.store.open()
        self.ready.set()

    def not_ready_reason(self) -> str | None:
        if not self.ready.is_set():
            return "starting: store or model not open yet"
        if self.settings.runs_update and self.model.current() is None and self.model.expected():
            return "a model version is promoted but none is loaded"
        if self.reader is not None and self.reader.rebalancing:
            return "the ingest reader is joining its consumer group"
        if self.stats.holding is not None:
            return f"holding the person partitions: {self.stats.holding}"
        return None

    def update_lag(self) -> None:
        consumer = self.app.consumer
        # Only partitions owned now: after a rebalance a moved partition's last value would stay
        # exported forever (double-counted by sum(), a stale alert). No await in between: atomic.
        metrics.LAG.clear()
        reader = self.reader.consumer if self.reader is not None else None
        owned: list[tuple[Any, Any]] = [(consumer, tp) for tp in consumer.assignment()]
        owned += [(reader, tp) for tp in (reader.assignment() if reader is not None else ())]
        for client, tp in owned:
            high = client.highwater(tp)
            pos = self.stats.positions.get((tp.topic, tp.partition))
            if high is not None:
                lag = high - (pos + 1 if pos is not None else 0)
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


def create_app(settings: Settings) -> tuple[faust.App, Worker]:
    """Build the Faust app for ``settings`` (no global app: tests build many)."""
    app = faust_tuning.lean_app(settings, web_port=settings.web_port, web_bind=settings.web_host, web_enabled=True)
    ctx = Worker(app, settings)
    raw_topic = app.topic(*settings.raw_topics(), settings.identity_topic,
                          key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    person_topic = app.topic(settings.person_topic, partitions=settings.person_partitions,
                             key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.early_task  # alongside Faust's first group join, not after it
    async def start_context() -> None:
        await retry_forever("store open", ctx.backoff, ctx.start)

    if settings.runs_ingest and not settings.faust_reads_raw:
        reader = ctx.reader = RawReader(settings, ctx.ingest, lambda: bool(app.should_stop))

        @app.early_task  # its own group's join runs alongside Faust's
        async def ingest_reader() -> None:
            await ctx.ready.wait()
            await reader.run()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def stop_reader(sender: Any, **_: Any) -> None:  # the producer is still up: finish the batch
            await reader.stop(settings.stop_grace_s)

    elif settings.faust_reads_raw:

        @app.agent(raw_topic, name="ingest")
        async def ingest(stream: Any) -> None:
            await ctx.ready.wait()
            await ctx.ingest.consume(stream)

    if settings.runs_update:

        @app.task
        async def model_watch() -> None:
            await ctx.ready.wait()
            if settings.model_version is None or ctx.models.platforms:  # a pinned (shared) version never swaps
                await watch_models(settings, ctx.models.refresh, lambda: bool(app.should_stop))

        @app.agent(person_topic, name="update")
        async def update(stream: Any) -> None:
            await ctx.ready.wait()
            await ctx.update.consume(stream, app)

    @app.timer(interval=5.0)
    async def lag_gauge() -> None:
        try:
            # Same condition as /ready: the not-ready alert must agree with what a rollout sees.
            metrics.READY.set(1 if ctx.not_ready_reason() is None and not app.rebalancing else 0)
            ctx.update_lag()
        except Exception:  # metrics must never kill the worker
            log.debug("lag gauge failed", exc_info=True)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        parts = [tp.partition for tp in revoked if tp.topic == settings.person_topic]
        ctx.updater.drop_partitions(parts)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        ctx.updater.own_partitions([tp.partition for tp in assigned if tp.topic == settings.person_topic])

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        # Not ready while a promoted model is not loaded (it would write states without vectors), nor
        # while a batch is held on an outage: a rollout must not count such a pod as healthy.
        why = ctx.not_ready_reason()
        ok = why is None and not app.rebalancing
        body: dict[str, Any] = {"ready": ok, "model_version": ctx.model.version}
        if why is not None:
            body["reason"] = why
        return web.json(body, status=200 if ok else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        body = ctx.stats.as_dict()
        body["model_version"] = ctx.model.version
        if ctx.models.platforms:
            body["platform_versions"] = ctx.models.versions()
        return web.json(body)

    app.interest_context = ctx  # type: ignore[attr-defined]
    return app, ctx
