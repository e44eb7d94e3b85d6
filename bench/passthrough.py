"""The framework ceiling: a Faust app that only decodes and acknowledges the worker's raw topics.

    python -m bench.passthrough      # settings from INTEREST_* like `interest worker`

Why it exists: the throughput bench compares the real worker with what Faust itself can do on the
same topics, on the same machine, in the same run.  It uses the worker's Faust settings and tuning
(``LeanApp`` without the per-event Monitor sensor, the consumer's ``fetch_max_wait_ms``, session
timeout, commit interval, buffer size, ``take_events(batch_size, within=batch_wait_ms)``) and decodes
every message with orjson, counting envelope elements, so the only difference from the worker is the
work the worker does: normalising, re-keying, the person topic, merging, encoding and the store.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import faust
import orjson

from schemas.settings import Settings, load_settings
from streams import faust_tuning
from streams.kafka_config import ensure_topics

log = logging.getLogger("bench.passthrough")


def create_app(settings: Settings) -> faust.App:
    """The minimal app: one agent over the raw topics and identity links, same Faust settings as the worker."""
    # A Faust agent over the raw topics, as a worker with ``ingest_reader=faust`` has: its stream buffer too.
    app = faust_tuning.lean_app(settings, stream_buffer_maxsize=faust_tuning.stream_buffer(settings, reads_raw=True))
    topic = app.topic(*settings.raw_topics(), settings.identity_topic,
                      key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counts = {"messages": 0, "events": 0}

    @app.agent(topic, name="passthrough")
    async def passthrough(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_wait_ms / 1000):
            try:
                for event in events:
                    value = orjson.loads(event.message.value)
                    inner = value.get("events") if isinstance(value, dict) else None
                    counts["events"] += len(inner) if isinstance(inner, list) else 1
                counts["messages"] += len(events)
            except asyncio.CancelledError:
                raise
            except Exception:  # never escape the agent loop (Faust would wait forever on the unacked message)
                log.exception("pass-through batch failed")

    @app.timer(interval=5.0)
    async def report() -> None:
        log.info("pass-through: %(messages)d messages, %(events)d events", counts)

    return app


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ensure_topics(settings, faust_tuning.app_topics(settings))
    app = create_app(settings)
    faust.Worker(app, loglevel="info", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
