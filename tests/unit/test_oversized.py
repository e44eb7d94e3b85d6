"""Oversized input never wedges ingest: byte-bounded envelopes, bounded attributes, cut DLQ records, no endless retry.

The stage, the normalizer and the codecs are the real ones.  The one stand-in
is ``LimitedSend``: a producer that refuses messages over a size with
aiokafka's own ``MessageSizeTooLargeError`` wrapped in Faust's
``ProducerSendError`` (exactly what ``faust`` raises), because a producer's
refusal cannot be caused without a broker; the live test
(tests/integration/test_oversized_live.py) causes it with a real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from schemas.adapters import MAX_ATTRIBUTE_DEPTH, MAX_ATTRIBUTES_BYTES, load_adapters
from schemas.events import CanonicalEvent
from schemas.normalize import Normalizer, decode_link
from schemas.records import (
    ENVELOPE_MAX_BYTES,
    ENVELOPE_MAX_RECORDS,
    OutMessage,
    PersonRecord,
    decode_envelope,
    encode_envelope,
    envelopes,
    person_partition,
    record_owner,
)
from schemas.settings import Settings
from streams.backoff import Backoff, retry_forever
from streams.dlq import DLQ_MAX_BYTES, headers_dict
from streams.stages import (
    DeadLetter,
    IngestStage,
    KafkaSender,
    NotAcked,
    Outbox,
    RawMessage,
    Source,
    deliver,
    too_large,
)
from streams.worker_stats import WorkerStats

NOW = int(time.time() * 1000)
NORMALIZER = Normalizer(load_adapters())
FAST = Backoff(0.001, 0.01)


def event(i: int, person: str, attr_bytes: int = 0) -> CanonicalEvent:
    attributes = {"page": "p" * attr_bytes} if attr_bytes else {}
    return CanonicalEvent(f"e{i}", person, "web", person, "click", f"i{i}", NOW - i, 2.0, attributes=attributes)


def web(**fields: Any) -> dict[str, Any]:
    return {"eid": "e1", "uid": "u1", "type": "click", "item_id": "i1", "ts": NOW - 1000, **fields}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def settings() -> Settings:
    fields: dict[str, Any] = {"person_topic": "t.by_person", "dlq_topic": "t.dlq", "person_partitions": 4,
                              "topics": ["t.events.web.click"], "retry_backoff_ms": 1, "retry_backoff_max_ms": 10}
    return Settings(**fields)


# -- 1. envelopes split by bytes as well as by count ----------------------------------------------------------------
def check_envelopes(records: Sequence[PersonRecord], out: list[tuple[int, bytes]], budget: int) -> None:
    """Every envelope within the budget and the count cap, on its records' partition, every record once, in order."""
    seen: dict[int, list[PersonRecord]] = {}
    for part, raw in out:
        assert len(raw) <= budget, f"envelope of {len(raw)} bytes over the {budget}-byte budget"
        got = decode_envelope(raw)
        assert 0 < len(got) <= ENVELOPE_MAX_RECORDS
        assert all(person_partition(record_owner(r), 4) == part for r in got)
        seen.setdefault(part, []).extend(got)
    ids = Counter(r.event_id for recs in seen.values() for r in recs if isinstance(r, CanonicalEvent))
    assert ids == Counter(r.event_id for r in records if isinstance(r, CanonicalEvent)), "every record exactly once"
    for part, got in seen.items():
        assert got == [r for r in records if person_partition(record_owner(r), 4) == part], "order kept per partition"


def test_mid_size_attributes_split_by_bytes_not_only_by_count() -> None:
    # 1,200 records of ~2.3 KB on three people: 500-record envelopes would be ~1.2 MB, over the 1 MB producer limit.
    records = [event(i, f"p{i % 3}", attr_bytes=2300) for i in range(1200)]
    assert len(encode_envelope(records[:500])) > 1_000_000
    out = list(envelopes(records, 4))
    check_envelopes(records, out, ENVELOPE_MAX_BYTES)
    assert max(len(raw) for _, raw in out) > ENVELOPE_MAX_BYTES * 0.9, "envelopes are packed, not one per record"


@pytest.mark.parametrize("budget", [500, 2_000, 40_000])
def test_every_envelope_fits_any_budget(budget: int) -> None:
    records = [event(i, f"p{i % 5}", attr_bytes=(i * 37) % 250) for i in range(700)]
    check_envelopes(records, list(envelopes(records, 4, max_bytes=budget)), budget)


def test_small_records_still_go_500_to_an_envelope_encoded_as_before() -> None:
    records = [event(i, "p1") for i in range(1001)]
    out = list(envelopes(records, 4))
    assert [len(decode_envelope(raw)) for _, raw in out] == [500, 500, 1]
    assert out[0][1] == encode_envelope(records[:500])


def test_a_record_alone_over_the_budget_is_dead_lettered_not_sent() -> None:
    big, small = event(1, "p1", attr_bytes=5000), event(2, "p1")
    out = list(envelopes([small, big, small], 4, max_bytes=2000))
    assert [decode_envelope(raw) for _, raw in out] == [[small], [big], [small]], "yielded alone, order kept"
    outbox = Outbox("t.by_person", 4, "t.dlq", envelope_max_bytes=2000)
    outbox.add_records([small, big])
    sent = [decode_envelope(m.value) for m in outbox.messages if m.topic == "t.by_person"]
    assert sent == [[small]]
    assert [d.reason for d in outbox.dead] == ["record_too_large"]
    assert "over the 2000-byte envelope budget" in outbox.dead[0].message


# -- 2. attributes bounded at normalisation ------------------------------------------------------------------------
def test_attributes_over_the_limit_are_rejected_with_size_and_limit() -> None:
    decoded = NORMALIZER.decode(orjson.dumps(web(page="x" * 20_000, referrer="r")), "web")
    assert decoded.events == []
    [(why, raw)] = decoded.rejected
    assert why.reason == "attributes_too_large"
    assert f"over the {MAX_ATTRIBUTES_BYTES}-byte limit" in why.message and "largest: 'page'" in why.message
    assert str(len(orjson.dumps({"page": "x" * 20_000, "referrer": "r"}))) in why.message
    assert raw == orjson.dumps(web(page="x" * 20_000, referrer="r")), "the DLQ keeps the original, not a truncation"


def test_the_attribute_limit_is_exact() -> None:
    fill = MAX_ATTRIBUTES_BYTES - len(b'{"page":""}')
    assert NORMALIZER.decode(orjson.dumps(web(page="x" * fill)), "web").events
    [(why, _)] = NORMALIZER.decode(orjson.dumps(web(page="x" * (fill + 1))), "web").rejected
    assert why.reason == "attributes_too_large"


def test_one_big_element_costs_only_itself() -> None:
    items = [web(eid="a"), web(eid="b", page=["y" * 1000] * 20), web(eid="c")]
    decoded = NORMALIZER.decode(orjson.dumps({"events": items}), "web")
    assert [e.event_id for e in decoded.events] == ["a", "c"]
    assert [(w.reason, w.index) for w, _ in decoded.rejected] == [("attributes_too_large", 1)]


# -- deep nesting ---------------------------------------------------------------------------------------------------
def test_json_deeper_than_orjson_parses_is_a_rejection() -> None:
    raw = b"[" * 2000 + b"]" * 2000
    [(why, kept)] = NORMALIZER.decode(raw, "web").rejected
    assert why.reason == "too_deep" and "1024" in why.message and kept == raw
    link = decode_link(b'{"a":' * 1500 + b"1" + b"}" * 1500, {"web"})
    assert getattr(link, "reason", None) == "too_deep"


@pytest.mark.parametrize("depth", [MAX_ATTRIBUTE_DEPTH + 1, 300, 1000])
def test_deep_attributes_are_rejected(depth: int) -> None:
    """33 levels could be written but is over the limit; 300 and 1,000 parse but orjson cannot write them."""
    value = b'{"n":' * depth + b'"leaf"' + b"}" * depth
    raw = b'{"eid":"e1","uid":"u1","type":"click","item_id":"i1","ts":%d,"page":%s}' % (NOW - 1000, value)
    [(why, _)] = NORMALIZER.decode(raw, "web").rejected
    assert why.reason == "attributes_too_deep"
    assert f"attribute 'page' is nested more than {MAX_ATTRIBUTE_DEPTH} levels deep" in why.message


def test_attributes_at_the_depth_limit_travel_and_deep_unused_fields_do_not_matter() -> None:
    value = nested(MAX_ATTRIBUTE_DEPTH)
    raw = b'{"eid":"e1","uid":"u1","type":"click","item_id":"i1","ts":%d,"page":%s,"junk":%s}' % (
        NOW - 1000, orjson.dumps(value), b"[" * 900 + b"]" * 900)
    [ev] = NORMALIZER.decode(raw, "web").events
    assert decode_envelope(encode_envelope([ev])) == [ev]


def test_deep_elements_of_an_envelope_keep_the_good_ones_and_the_message_once() -> None:
    deep = b'{"n":' * 400 + b"1" + b"}" * 400
    raw = b'{"events":[%s,{"eid":"x","uid":"u1","type":"click","item_id":"i","ts":%d,"page":%s},%s,%s]}' % (
        orjson.dumps(web(eid="a")), NOW - 1000, deep, orjson.dumps(web(eid="b")), b"[" * 300 + b"]" * 300)
    decoded = NORMALIZER.decode(raw, "web")
    assert [e.event_id for e in decoded.events] == ["a", "b"]
    (w1, b1), (w2, b2) = decoded.rejected
    assert (w1.reason, w1.index, b1) == ("attributes_too_deep", 1, raw), "the element that cannot be written again"
    assert (w2.reason, w2.index, b2) == ("not_object", 3, b""), "the message is kept once, not per element"
    assert "events[1]" in w2.message


def test_the_ingest_stage_survives_a_batch_of_every_oversized_kind() -> None:
    cfg = settings()
    stage = IngestStage(cfg, NORMALIZER, _never_called, WorkerStats())
    raws = [orjson.dumps(web(eid="good1")), orjson.dumps(web(eid="big", page="x" * 50_000)),
            b"[" * 5000 + b"]" * 5000, b'{"events":[%s]}' % (b'{"page":' * 500 + b"1" + b"}" * 500),
            b"\xff\xfe", orjson.dumps(web(eid="good2"))]
    batch = [RawMessage(Source("t.events.web.click", 0, i, b"k"), raw) for i, raw in enumerate(raws)]
    outbox = stage.decode(batch)
    assert [d.reason for d in outbox.dead] == ["attributes_too_large", "too_deep", "missing_field", "not_utf8"]
    envs = [r for m in outbox.messages if m.topic == cfg.person_topic for r in decode_envelope(m.value)]
    assert sorted(r.event_id for r in envs if isinstance(r, CanonicalEvent)) == ["good1", "good2"]


async def _never_called(messages: Sequence[OutMessage]) -> None:  # decode only
    raise AssertionError


# -- 3. DLQ records that cannot fit ---------------------------------------------------------------------------------
def test_a_dead_letter_over_the_budget_keeps_a_prefix_its_size_and_its_digest() -> None:
    raw = bytes(range(256)) * 5000  # 1.28 MB, not UTF-8
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_dead(_letter(raw))
    [msg] = outbox.messages
    headers = headers_dict(msg.headers)
    assert msg.value == raw[:DLQ_MAX_BYTES]
    assert headers["truncated"] == "1"
    assert int(headers["original_size"]) == len(raw)
    assert headers["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert headers["error_class"] == "not_utf8" and headers["source_offset"] == "7"


def test_a_dead_letter_within_the_budget_is_kept_whole_without_extra_headers() -> None:
    raw = b"x" * DLQ_MAX_BYTES
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_dead(_letter(raw))
    [msg] = outbox.messages
    assert msg.value == raw and "truncated" not in headers_dict(msg.headers)


def test_a_huge_key_is_left_off_and_named() -> None:
    key = b"k" * 10_000
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_dead(_letter(b"v", key))
    [msg] = outbox.messages
    headers = headers_dict(msg.headers)
    assert msg.key is None and msg.value == b"v"
    assert headers["original_key_size"] == "10000" and headers["original_key_sha256"] == hashlib.sha256(key).hexdigest()


def _letter(raw: bytes, key: bytes | None = b"k") -> DeadLetter:
    return DeadLetter(raw, Source("t.events.web.click", 3, 7, key), "not_utf8", "not UTF-8")


# -- 4. no send retried forever on an error that cannot succeed ------------------------------------------------------
class LimitedSend:
    """Refuses messages over ``limit`` bytes as Faust does, after ``transient`` outages; acks the rest, as
    ``KafkaSender`` does, raising ``NotAcked`` that names them."""

    def __init__(self, limit: int, transient: int = 0) -> None:
        self.limit, self.transient = limit, transient
        self.acked: list[OutMessage] = []
        self.calls = 0

    async def __call__(self, messages: Sequence[OutMessage]) -> None:
        self.calls += 1
        if self.transient:
            self.transient -= 1
            raise KafkaConnectionError("broker away")
        acked, refused = set(), None
        for index, m in enumerate(messages):
            if len(m.value) + len(m.key or b"") > self.limit:
                try:
                    raise MessageSizeTooLargeError(f"The message is {len(m.value)} bytes")
                except MessageSizeTooLargeError as exc:
                    refused = ProducerSendError(f"Error while sending: {exc!r}")
                    refused.__cause__ = exc
            else:
                acked.add(index)
                self.acked.append(m)
        if refused is not None:
            raise NotAcked(refused, frozenset(acked)) from refused


def test_too_large_sees_through_faust_and_leaves_transient_errors_alone() -> None:
    try:
        try:
            raise MessageSizeTooLargeError("big")
        except MessageSizeTooLargeError as exc:
            raise ProducerSendError("Error while sending") from exc
    except ProducerSendError as wrapped:
        assert too_large(wrapped)
    assert not too_large(KafkaConnectionError("down")) and not too_large(ProducerSendError("x"))


def test_refused_envelopes_are_split_and_a_lone_record_dead_lettered() -> None:
    records = [event(i, "p1", attr_bytes=3000) for i in range(40)] + [event(99, "p1", attr_bytes=9000)]
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_records(records)
    assert len(outbox.messages) == 1
    send = LimitedSend(limit=8000, transient=2)
    asyncio.run(deliver(outbox, send, FAST, "test send"))
    sent = [r for m in send.acked if m.topic == "t.by_person" for r in decode_envelope(m.value)]
    assert sent == records[:40], "every record that fits is sent once, in order"
    [dead] = [m for m in send.acked if m.topic == "t.dlq"]
    headers = headers_dict(dead.headers)
    assert headers["error_class"] == "record_too_large" and "refused by the producer" in headers["error_message"]
    assert [d.reason for d in outbox.dead] == ["record_too_large"]
    assert all(len(m.value) <= 8000 for m in send.acked)
    assert headers["truncated"] == "1", "the dead letter itself was too large for the producer, so it was cut"


def test_what_was_acknowledged_is_not_sent_twice() -> None:
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_dead(_letter(b"bad one"))
    outbox.add_records([event(i, "p1", attr_bytes=3000) for i in range(4)])
    outbox.add_dead(_letter(b"bad two"))
    send = LimitedSend(limit=8000)
    asyncio.run(deliver(outbox, send, FAST, "test send"))
    assert sorted(m.value for m in send.acked if m.topic == "t.dlq") == [b"bad one", b"bad two"]
    assert [r.event_id for m in send.acked if m.topic == "t.by_person" for r in decode_envelope(m.value)
            if isinstance(r, CanonicalEvent)] == ["e0", "e1", "e2", "e3"]


def test_a_refused_dead_letter_is_cut_until_it_fits() -> None:
    raw = b"z" * 300_000
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_dead(_letter(raw))
    send = LimitedSend(limit=50_000)
    asyncio.run(deliver(outbox, send, FAST, "test send"))
    [msg] = send.acked
    headers = headers_dict(msg.headers)
    assert 0 < len(msg.value) <= 50_000 and raw.startswith(msg.value)
    assert headers["original_size"] == "300000" and headers["original_sha256"] == hashlib.sha256(raw).hexdigest()


def test_transient_failures_are_still_retried_until_they_pass() -> None:
    outbox = Outbox("t.by_person", 4, "t.dlq")
    outbox.add_records([event(1, "p1")])
    send = LimitedSend(limit=10_000, transient=5)
    asyncio.run(deliver(outbox, send, FAST, "test send"))
    assert send.calls == 6 and len(send.acked) == 1 and outbox.dead == []


# -- KafkaSender: every ack observed, the size error reported first -----------------------------------------------
class _Producer:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[None]] = []

    async def send(self, topic: str, key: Any, value: bytes, partition: Any, ts: Any, headers: Any) -> Any:
        if value == b"refuse":
            raise ProducerSendError("Error while sending") from MessageSizeTooLargeError("big")
        fut: asyncio.Future[None] = self.loop.create_future()
        if value == b"down":
            self.loop.call_soon(fut.set_exception, KafkaConnectionError("down"))
        else:
            self.loop.call_soon(fut.set_result, None)
        self.futures.append(fut)
        return fut


def test_kafka_sender_waits_for_queued_acks_and_reports_the_size_error() -> None:
    async def scenario() -> None:
        producer = _Producer()
        sender = KafkaSender(type("App", (), {"producer": producer})())
        with pytest.raises(NotAcked) as info:
            await sender([OutMessage("t", b"down"), OutMessage("t", b"ok"), OutMessage("t", b"refuse")])
        assert too_large(info.value) and info.value.acked == {1}
        assert all(f.done() for f in producer.futures), "no acknowledgement left unobserved"
        with pytest.raises(NotAcked) as again:
            await sender([OutMessage("t", b"ok"), OutMessage("t", b"down")])
        assert isinstance(again.value.__cause__, KafkaConnectionError) and not too_large(again.value)
        assert again.value.acked == {0}

    asyncio.run(scenario())


# -- 5. a worker busy retrying still stops ----------------------------------------------------------------------------
def test_a_retry_loop_stops_at_once_when_cancelled() -> None:
    async def scenario() -> float:
        async def always_down() -> None:
            raise KafkaConnectionError("down")

        task = asyncio.create_task(retry_forever("send", Backoff(5.0, 10.0), always_down))
        await asyncio.sleep(0.05)  # now in the 5 s backoff sleep
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 0.5


def test_deliver_stops_when_cancelled_and_cancellation_is_never_retried() -> None:
    async def scenario() -> int:
        outbox = Outbox("t.by_person", 4, "t.dlq")
        outbox.add_records([event(1, "p1")])
        send = LimitedSend(limit=10, transient=10**9)
        task = asyncio.create_task(deliver(outbox, send, Backoff(0.01, 0.05), "send"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)
        calls = 0

        async def cancelled() -> None:
            nonlocal calls
            calls += 1
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await retry_forever("send", FAST, cancelled)
        return calls

    assert asyncio.run(scenario()) == 1
