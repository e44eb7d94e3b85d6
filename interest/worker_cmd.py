"""``interest worker``: run the Faust stream worker with the project's settings."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def redact_secrets_in_logs(secrets: list[str]) -> None:
    """Mask ``secrets`` in every log message from now on, whoever logs it.

    Why: kafka-python's ``KafkaAdminClient`` logs its whole configuration at
    DEBUG, SASL password included; a record factory (unlike a handler filter)
    also covers the handlers Faust installs later.
    """
    secrets = [s for s in secrets if s]
    if not secrets:
        return
    base = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error reporting
            return record
        if any(s in message for s in secrets):
            for secret in secrets:
                message = message.replace(secret, "**********")
            record.msg, record.args = message, None
        return record

    logging.setLogRecordFactory(factory)


_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave glibc's default); whether it was applied.

    Why: glibc gives threads that allocate at the same time arenas of their own (up to 8 per core), and
    memory freed in one arena is not reused by another: a worker's encode, store and fetch threads each
    kept their own high-water mark of a catch-up.  Not glibc (musl, macOS): nothing to set, returns False.
    """
    if count <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc is among them, no ldconfig run
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


def run_worker(settings: object) -> None:
    """Create topics if missing, then run the Faust worker until SIGTERM/SIGINT.

    Faust's worker installs the signal handlers: on SIGTERM it stops the
    consumer, lets agents finish the batch in flight, commits acknowledged
    offsets and leaves the group.
    """
    import faust

    from schemas.settings import Settings
    from streams import faust_tuning, metrics
    from streams.app import create_app
    from streams.kafka_config import KafkaConfigError, check_kafka_access, ensure_topics

    assert isinstance(settings, Settings)
    # Before the stages' threads start, which would each take arenas of their own: with glibc's default the
    # peak RSS of a 200 000-event catch-up was 525 and 596 MB, with 2 arenas 475-490 in four runs (bench.memory).
    # An operator's MALLOC_ARENA_MAX (read by glibc itself) wins.
    arenas_limited = "MALLOC_ARENA_MAX" not in os.environ and limit_malloc_arenas(settings.malloc_arena_max)
    configure_logging(settings.log_level)
    if settings.malloc_arena_max and not arenas_limited:
        logging.getLogger("interest.worker").info(
            "INTEREST_MALLOC_ARENA_MAX is not applied (MALLOC_ARENA_MAX is set, or this is not glibc)")
    redact_secrets_in_logs([v.get_secret_value() for v in (settings.kafka_sasl_password, settings.cassandra_password)
                            if v is not None])
    check_store(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        check_kafka_access(settings)
        ensure_topics(settings, faust_tuning.app_topics(settings))
    except KafkaConfigError as exc:  # wrong credentials, CA or person-topic partitions: say which setting to fix
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.worker_stages == "all" and settings.ingest_reader == "batch":
        _seed_raw_group(settings)
    # The encode and store threads hold the GIL for up to this long before the event loop, which does
    # Faust's per-message work, may run again: 0.5 ms against Python's 5 cut freshness p99 at 2000/s by
    # about a quarter and cost no catch-up throughput (README, "Measured").
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    # Python's default GC thresholds (700, 10, 10) ran a full collection every ~2.5 s at 2000 events/s, each
    # ~200 ms with the event loop stopped, collecting ~170 objects: the cached windows are mostly
    # acyclic and live long.  Rarer young and full passes halved freshness p99 (README, "Measured").
    gc.set_threshold(*settings.gc_thresholds)
    metrics.watch_gc()  # every pause on /metrics: they stop both stages
    app, _ = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def _seed_raw_group(settings: object) -> None:
    """A worker that read the raw topics in the app's group (``ingest_reader=faust``) goes on where it was."""
    from interest.split_worker import seed_ingest_offsets
    from schemas.settings import Settings

    assert isinstance(settings, Settings)
    try:
        seeded = seed_ingest_offsets(settings)
    except Exception as exc:  # broker not reachable yet: the reader waits for it; replays are duplicates
        typer.echo(f"could not seed the ingest group's offsets ({type(exc).__name__}: {exc})", err=True)
        return
    if seeded:
        typer.echo(f"the ingest group starts from {settings.app_id}'s offsets on {seeded} raw partitions", err=True)


def check_store(settings: object) -> None:
    """Open the Cassandra store once before starting: an operator error (bad credentials,
    untrusted CA, missing schema) exits 2 with its message instead of being retried forever.

    A store that is merely unreachable (``StoreUnavailable``) is left to the
    worker, which retries it; SQLite needs no check (the worker creates it).
    """
    import asyncio

    from schemas.settings import Settings
    from streams.stores.base import StoreError, StoreUnavailable
    from streams.stores.factory import opened_store

    assert isinstance(settings, Settings)
    if not settings.store_url.startswith("cassandra:") or not settings.runs_update:
        return

    async def probe() -> None:
        async with opened_store(settings):
            pass

    try:
        asyncio.run(probe())
    except StoreUnavailable:
        return
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    from interest.common import settings_or_exit

    @app.command()
    def worker(
        broker: Annotated[str | None, typer.Option(help="Kafka bootstrap (INTEREST_BROKER_URL)")] = None,
        store: Annotated[str | None, typer.Option(help="Store URL (INTEREST_STORE_URL)")] = None,
        registry: Annotated[str | None, typer.Option(help="Model registry (INTEREST_REGISTRY)")] = None,
        web_port: Annotated[int | None, typer.Option(help="Web port for /metrics /health /ready")] = None,
        split: Annotated[bool, typer.Option(
            "--split", help="One process per stage (ingest on WEB_PORT+1), each with its own event loop")] = False,
    ) -> None:
        """Run the stream worker: raw topics -> person topic -> vectors -> store."""
        from interest.split_worker import stop_with_parent

        stop_with_parent()  # a split child: SIGTERM when its parent dies
        settings = settings_or_exit(broker_url=broker, store_url=store, registry=registry, web_port=web_port)
        if split:
            from interest.split_worker import run_split

            raise typer.Exit(run_split(settings))
        run_worker(settings)

    register_demo(app)


def register_demo(app: typer.Typer) -> None:
    from interest.common import settings_or_exit

    @app.command()
    def demo(
        seconds: Annotated[float, typer.Option(help="How long to produce live traffic")] = 30.0,
        rate: Annotated[float, typer.Option(help="Events per second")] = 500.0,
        users: Annotated[int, typer.Option(help="Synthetic people")] = 2000,
        items: Annotated[int, typer.Option(help="Synthetic items")] = 3000,
        seed: Annotated[int, typer.Option(help="Random seed")] = 0,
        data_dir: Annotated[str, typer.Option(help="Where the store, registry and logs go")] = "data/demo",
    ) -> None:
        """Run everything on embedded defaults: broker, first model, worker, live traffic, live view."""
        from interest.demo import run_demo

        settings = settings_or_exit(data_dir=data_dir, store_url=f"sqlite:///{data_dir}/profiles.db",
                                    registry=f"{data_dir}/registry")
        run_demo(settings, seconds, rate, users, items, seed)
