"""bench.profile's stack classifier on hand-written py-spy lines (pure functions: no py-spy, no worker)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.profile import NATIVE, classify, cost_table, parse, tally

LOOP = "run_forever (asyncio/base_events.py);_run_once (asyncio/base_events.py);_run (asyncio/events.py)"
INGEST = f"{LOOP};ingest (streams/app.py);IngestStage.consume (streams/stages.py);IngestStage.run (streams/stages.py)"
UPDATE = (f"{LOOP};update (streams/app.py);UpdateStage.consume (streams/stages.py);UpdateStage.run (streams/stages.py);"
          "UpdateStage._update_with_retries (streams/stages.py);ProfileUpdater.process (streams/updater.py)")
READER = f"{LOOP};ingest_reader (streams/app.py);RawReader.run (streams/raw_reader.py)"
POOL = ("Thread._bootstrap (threading.py);Thread.run (threading.py);_worker (concurrent/futures/thread.py);"
        "_WorkItem.run (concurrent/futures/thread.py)")


@pytest.mark.parametrize(("stack", "category"), [
    (f"{INGEST};IngestStage.decode (streams/stages.py);Normalizer.decode (schemas/normalize.py);"
     "decode_json (schemas/normalize.py)", "decode"),
    (f"{INGEST};IngestStage.decode (streams/stages.py);Normalizer.decode (schemas/normalize.py);"
     "PlatformAdapter.to_canonical (schemas/adapters.py);_get (schemas/adapters.py)", "adapters"),
    (f"{INGEST};IngestStage.decode (streams/stages.py);Outbox.add_records (streams/stages.py);"
     "envelopes (schemas/records.py);group_by_partition (schemas/records.py);person_partition (schemas/records.py)",
     "routing"),
    (f"{INGEST};IngestStage.decode (streams/stages.py);Outbox.add_records (streams/stages.py);"
     "envelopes (schemas/records.py);encode_envelope (schemas/records.py);_to_wire (schemas/records.py);"
     "CanonicalEvent.to_dict (schemas/events.py)", "envelope produce"),
    (f"{INGEST};deliver (streams/stages.py);KafkaSender.__call__ (streams/stages.py);"
     "Producer.send (faust/transport/drivers/aiokafka.py);AIOKafkaProducer.send (aiokafka/producer/producer.py)",
     "envelope produce"),
    ("IngestStage.consume (streams/stages.py);take_events (faust/streams.py);__anext__ (faust/channels.py)",
     "faust per-message"),
    (f"{READER};to_messages (streams/raw_reader.py);merge (heapq.py);<lambda> (streams/raw_reader.py)",
     "ingest batch"),
    (f"{READER};RawReader._fetched (streams/raw_reader.py);next_offsets (streams/raw_reader.py)", "ingest batch"),
    (f"{READER};AIOKafkaConsumer.getmany (aiokafka/consumer/consumer.py);Fetcher.fetched_records "
     "(aiokafka/consumer/fetcher.py)", "consumer fetch"),
    (f"{READER};RawReader._fetched (streams/raw_reader.py);IngestStage.run (streams/stages.py);"
     "IngestStage.decode (streams/stages.py);Normalizer.decode (schemas/normalize.py);"
     "decode_json (schemas/normalize.py)", "decode"),
    (f"{UPDATE.split(';ProfileUpdater')[0]};decode_envelope (schemas/records.py);_from_wire (schemas/records.py);"
     "CanonicalEvent.from_dict (schemas/events.py)", "second hop"),
    ("update (streams/app.py);UpdateStage.consume (streams/stages.py);take_events (faust/streams.py)", "second hop"),
    (f"{UPDATE};ProfileUpdater._merge (streams/updater.py);merge_events (streams/updater.py)", "merge"),
    (f"{POOL};SqliteStore._guarded (streams/stores/sqlite.py);select_in (streams/stores/sqlite.py)", "store read"),
    (f"{POOL};SqliteStore._guarded (streams/stores/sqlite.py);_write (streams/stores/sqlite.py)", "store write"),
    (f"{POOL};ProfileUpdater._vectors (streams/updater.py);encode_with_interests (model/interests.py);"
     "EncoderRuntime.encode (model/runtime.py);featurize (model/features.py)", "encode: featurize"),
    (f"{POOL};ProfileUpdater._vectors (streams/updater.py);encode_with_interests (model/interests.py);"
     "EncoderRuntime.encode (model/runtime.py);EncoderRuntime._run (model/runtime.py);"
     "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py)", "encode: onnx run"),
    (f"{POOL};ProfileUpdater._vectors (streams/updater.py);encode_with_interests (model/interests.py);"
     "person_interests (model/interests.py)", "encode: interests"),
    (f"{LOOP};Consumer._commit_handler (faust/transport/consumer.py);Consumer.commit (faust/transport/consumer.py);"
     "AIOKafkaConnection.send (aiokafka/conn.py);write (asyncio/streams.py)", "commit"),
    (f"{LOOP};Fetcher._proc_fetch_request (aiokafka/consumer/fetcher.py);AIOKafkaConnection.send (aiokafka/conn.py);"
     "StreamWriter.write (asyncio/streams.py)", "consumer fetch"),
    (f"{LOOP};_read (aiokafka/conn.py)", "consumer fetch"),
    (f"{LOOP};EpollSelector.select (selectors.py)", "idle"),
    (f"{POOL};Future.set_result (asyncio/futures.py);call_soon_threadsafe (asyncio/base_events.py)", "event loop"),
    (LOOP, "event loop"),
    ("<module> (something.py);helper (somewhere/else.py)", "other"),
])
def test_classify(stack: str, category: str) -> None:
    assert classify(stack.split(";")) == category


def test_idle_only_as_the_innermost_frame() -> None:
    """A pool thread running work passes through ``_worker``: that is not idle."""
    assert classify(f"{POOL};SqliteStore._guarded (streams/stores/sqlite.py);_write (streams/stores/sqlite.py)"
                    .split(";")) == "store write"
    assert classify(POOL.split(";")[:3]) == "idle"


def test_parse_and_tally() -> None:
    lines = [f"thread (101): MainThread;{INGEST};IngestStage.decode (streams/stages.py);"
             "decode_json (schemas/normalize.py) 30",
             f"thread (101): MainThread;{UPDATE};ProfileUpdater._merge (streams/updater.py) 10",
             f"thread (202): asyncio_0;{POOL};SqliteStore._guarded (streams/stores/sqlite.py);"
             "_write (streams/stores/sqlite.py) 5",
             f"thread (101): MainThread;{LOOP};EpollSelector.select (selectors.py) 55",
             "not a stack line", ""]
    assert parse(lines[2]) is not None and parse(lines[4]) is None
    counts = tally(lines)
    assert counts == {"101": Counter({"decode": 30, "merge": 10, "idle": 55}), "202": Counter({"store write": 5})}
    # thread 101 used 4 CPU s, 202 1 s, and 303 (never sampled: a native pool) 1 s, over 1000 events; the
    # idle samples (a thread waiting for a core on a shared machine) get no CPU
    table = cost_table(counts, {"101": 4.0, "202": 1.0, "303": 1.0}, 1000)
    assert table["decode"]["us_per_event"] == pytest.approx(3000.0)
    assert table["merge"]["us_per_event"] == pytest.approx(1000.0)
    assert table["store write"]["us_per_event"] == pytest.approx(1000.0)
    assert table[NATIVE]["us_per_event"] == pytest.approx(1000.0)
    assert table["decode"]["share"] == pytest.approx(30 / 45, abs=1e-4)
    assert sum(v["cpu_share"] for v in table.values()) == pytest.approx(1.0, abs=1e-3)
