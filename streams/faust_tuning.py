"""One Faust knob Faust does not expose: the consumer's ``fetch_max_wait_ms``.

Why: faust-streaming builds its aiokafka consumer with a hard-coded
``fetch_max_wait_ms=1500``.  Apache Kafka answers a fetch as soon as data
arrives, so the value only matters when idle; brokers that hold the fetch
for the whole wait (the embedded Tansu broker does) add up to that much
latency on every hop, and the worker has two hops (raw topic, person topic).
Measured on Tansu: 1500 ms gives ~370 ms median delivery latency, 50 ms
gives ~9 ms.  The value is per app (``app.interest_fetch_max_wait_ms``), so
apps that did not ask keep Faust's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from schemas.settings import Settings

EarlyTask = Callable[[], Coroutine[Any, Any, None]]

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    wait = getattr(self.app, "interest_fetch_max_wait_ms", None)
    if wait is not None and hasattr(consumer, "_fetch_max_wait_ms"):
        consumer._fetch_max_wait_ms = int(wait)
    return consumer


def install() -> None:
    """Idempotent; called by ``streams.app.create_app``."""
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


class LeanApp(faust.App):
    """A Faust app without Faust's built-in Monitor sensor.

    Why: the Monitor records per-event timing dictionaries for Faust's own web
    statistics pages (``on_stream_event_in`` builds a dict per event per
    sensor); the worker exports its own Prometheus metrics per batch instead,
    so that per-event bookkeeping is pure overhead on the hot path.
    """

    def on_init_dependencies(self) -> Any:
        services = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return services

    def early_task(self, fn: EarlyTask) -> EarlyTask:
        """Like ``@app.task``, but started once the app's services are (the producer is), not after a rebalance.

        Why: Faust starts ``@app.task`` functions only when its consumer's first group join and table
        recovery are done (``App.on_started``).  Opening the store, loading the model and the batch
        reader's own join (another group) need neither; run alongside Faust's join, a worker is ready
        one group join (about half the session timeout on Tansu) and one model load sooner, at every
        start and at every step of a rollout.
        """
        self.__dict__.setdefault("_interest_early_tasks", []).append(fn)
        return fn

    async def on_started(self) -> None:
        if not self.should_stop:  # mode calls on_started even when a stop cut the start of the children short
            for fn in self.__dict__.get("_interest_early_tasks", []):
                self.add_future(fn())  # tracked like Faust's own tasks: cancelled when the app stops
        await super().on_started()


def group_id(settings: Settings) -> str:
    """The Faust app id, which is the consumer group: an ingest-only process has a group of its own.

    Why: Faust's assignor hands every subscribed topic's partitions to all members alike, so a
    process without the ingest agent must never share a group with the raw topics' consumers.
    """
    if settings.worker_stages == "ingest":
        # With the batch reader the ingest group is the reader's own (streams/raw_reader.py); the Faust app
        # of such a process consumes nothing and must not join it under another assignor.
        return f"{settings.app_id}-ingest" + ("-web" if settings.ingest_reader == "batch" else "")
    return settings.app_id


def leader_topic(settings: Settings) -> str:
    """The topic Faust's leader assignor declares for the app (``LeaderAssignor._leader_topic_name``).

    The worker creates it first, with ``kafka_topic_replication`` (Faust itself would use
    ``topic_replication_factor``, which takes no -1), so a cluster that requires its replica count
    accepts it.  It carries no data.
    """
    return f"{group_id(settings)}-__assignor-__leader"


def app_topics(settings: Settings) -> dict[str, int]:
    """What a process running our Faust app creates before Faust starts: every topic the worker reads or
    writes, and the assignor's leader topic, so each has ``kafka_topic_replication`` replicas."""
    from streams.kafka_config import worker_topics

    return worker_topics(settings) | {leader_topic(settings): 1}


def raw_group(settings: Settings) -> str:
    """The consumer group that reads and commits the raw topics and identity links.

    The batch reader (``streams/raw_reader.py``) and an ingest-only Faust process use
    ``APP_ID-ingest``; a one-process worker with ``ingest_reader=faust`` reads them in the app's group.
    """
    if settings.ingest_reader == "batch" or settings.worker_stages == "ingest":
        return f"{settings.app_id}-ingest"
    return settings.app_id


def stream_buffer(settings: Settings, reads_raw: bool | None = None) -> int:
    """Messages a Faust stream may hold unprocessed (Faust's back pressure): what its agent reads decides it.

    Why: with the batch reader Faust's only stream is the person topic, whose messages are envelopes of up
    to 500 records.  The ingest side then outruns the update stage in a catch-up, and Faust's default of 4 096
    buffered envelopes held 50-100 MB more at the peak of a 200 000-event catch-up (``bench.memory``).  Two
    update batches of envelopes keep the stage fed; the raw topics' single-event messages need the larger one.
    """
    if settings.faust_reads_raw if reads_raw is None else reads_raw:
        return max(4096, settings.batch_size * 2)
    return max(64, settings.update_batch_envelopes * 2)


def lean_app(settings: Settings, **overrides: Any) -> LeanApp:
    """The Faust app every process of ours builds (worker, pass-through bench), tuned as above.

    One place for the Faust options so the benchmark's framework ceiling is
    measured with exactly the worker's configuration.
    """
    from streams.kafka_config import faust_credentials

    options: dict[str, Any] = {
        "broker": [f"kafka://{h}" for h in settings.bootstrap_servers()],
        "broker_credentials": faust_credentials(settings),
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        # Every topic exists before Faust starts (ensure_topics, with kafka_topic_replication; its assignor's
        # leader topic too: leader_topic), so Faust's declarations find them there; it takes no -1.
        "topic_replication_factor": max(settings.kafka_topic_replication, 1),
        "topic_allow_declare": True,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_linger": 0.005,
        "stream_buffer_maxsize": stream_buffer(settings),
        "web_enabled": False,
        "datadir": f"{settings.data_dir}/faust-{group_id(settings)}",
        "table_standby_replicas": 0,
    }
    options.update(overrides)
    install()
    app = LeanApp(group_id(settings), **options)
    app.interest_fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms  # type: ignore[attr-defined]
    return app
