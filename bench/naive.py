"""The naive baseline: one event at a time, PyTorch eager, one SQLite transaction per event.

What a first implementation of "update a person's interest vector on every event" looks like, and
what the worker's batching (envelopes, one onnxruntime call per batch, one store write per batch)
is measured against.  For each event it loads that person's sequence, merges the event (the same
``merge_events`` as the worker), runs the PyTorch encoder on that one sequence with the *same
weights* as the published ONNX model, and writes the sequence and the vector in its own committed
transaction (WAL, ``synchronous=FULL``: the SQLite store's defaults).

It reads the same pre-produced raw topics with kafka-python (assigned partitions, no consumer-group
join) and its clock starts after the model is loaded, both in its favour; it stops after
``max_seconds`` or ``max_events``, which also favours it, because early in a catch-up people's
sequences are shorter than at the end.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from schemas.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_profiles (
    person_id TEXT PRIMARY KEY, events BLOB NOT NULL, vector BLOB NOT NULL, event_count INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID"""
_UPSERT = """
INSERT INTO naive_profiles (person_id, events, vector, event_count, updated_ms) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (person_id) DO UPDATE SET events = excluded.events, vector = excluded.vector,
event_count = excluded.event_count, updated_ms = excluded.updated_ms"""


def load_torch_model(registry: str, version: str, threads: int | None = 1) -> Any:
    """The PyTorch module with the published version's weights (eval mode).

    One thread by default: for one sequence at a time a second intra-op thread buys nothing, and
    on a shared 2-core machine PyTorch's OpenMP threads spin-wait for a busy core (measured: 2.3 ms
    per sequence with one thread, 50 ms with two while another job ran), which would flatter us.
    """
    import torch

    from model.encoder import InterestEncoder
    from model.publish import load_weights
    from model.registry import Registry

    spec, cfg, state = load_weights(Registry(registry), version)
    model = InterestEncoder(spec, cfg)
    model.load_state_dict(state)
    model.eval()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return model


def run_naive(settings: Settings, version: str, db_path: Path, max_events: int, max_seconds: float) -> dict[str, Any]:
    """Process events one by one until ``max_events``, ``max_seconds`` or the end of the topics."""
    import torch
    from kafka import KafkaConsumer, TopicPartition

    from model.features import featurize
    from schemas.adapters import load_adapters
    from schemas.normalize import Normalizer
    from schemas.sequence import PersonState, SeqEvent
    from schemas.topics import topic_platform_action
    from streams.kafka_config import kafka_python_options
    from streams.stores.codec import pack_events, unpack_events, vector_bytes
    from streams.updater import merge_events

    model = load_torch_model(settings.registry, version)
    spec = model.spec
    names = spec.input_names()
    normalizer = Normalizer(load_adapters())
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(_SCHEMA)
    consumer = KafkaConsumer(**kafka_python_options(settings), enable_auto_commit=False, client_id="bench-naive",
                             max_poll_records=500)
    tps = [TopicPartition(t, p) for t in settings.raw_topics() for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    done = messages = 0
    started = time.perf_counter()
    try:
        while done < max_events and time.perf_counter() - started < max_seconds:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if all(consumer.position(tp) >= ends[tp] for tp in tps):
                    break
                continue
            for tp, records in batch.items():
                platform, action = topic_platform_action(tp.topic)
                for record in records:
                    if done >= max_events or time.perf_counter() - started >= max_seconds:
                        break
                    messages += 1
                    for event in normalizer.decode(record.value, platform, action).events:
                        row = conn.execute("SELECT events, event_count FROM naive_profiles WHERE person_id = ?",
                                           (event.person_id,)).fetchone()
                        state = PersonState(event.person_id, unpack_events(row[0]) if row else [],
                                            row[1] if row else 0)
                        seq = SeqEvent(event.event_id, event.ts_ms, event.item_id, event.action, event.platform,
                                       event.weight)
                        merge_events(state, [seq], settings.seq_len)
                        feats = featurize([state.events], spec)
                        with torch.no_grad():
                            vector = model(*(torch.from_numpy(feats[n]) for n in names)).numpy()[0]
                        conn.execute("BEGIN IMMEDIATE")
                        conn.execute(_UPSERT, (event.person_id, pack_events(state.events),
                                               vector_bytes(np.asarray(vector)), state.event_count,
                                               int(time.time() * 1000)))
                        conn.execute("COMMIT")
                        done += 1
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
        conn.close()
    return {"events": done, "messages": messages, "seconds": round(seconds, 2), "torch_threads": 1,
            "events_per_s": round(done / seconds, 1) if seconds else None,
            "stopped": "events" if done >= max_events else ("time" if seconds >= max_seconds else "end of topics")}
