"""Bad input at scale, and erasing a person end to end.

What a user relies on: a stream where every third message is broken in one
of the ways the foundation issue lists keeps the good ones flowing, and every
bad one lands in the DLQ with its own specific reason; and ``interest forget``
removes a person everywhere, prints a receipt, and keeps a late event from
bringing them back.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from interest.produce import produce_events, raw_topic_map
from interest.synthetic import RawEvent
from schemas.sequence import PersonState, Profile
from schemas.settings import Settings
from streams.kafka_config import ensure_topics, kafka_python_options, worker_topics
from streams.stores.base import StoreBatch
from streams.stores.factory import open_store
from testkit.chaos import dlq, interest, raw_events, report, stored_counts, synthetic, wait_for_oracle
from testkit.helpers import WorkerProcess, metric_value, wait_until

NOW = int(time.time() * 1000)


def _web(i: int, **changes: Any) -> bytes:
    value: dict[str, Any] = {"eid": f"bad{i}", "uid": f"bad-user-{i % 7}", "type": "click", "item_id": "i1",
                             "ts": NOW - 60_000}
    for key, new in changes.items():
        if new is ...:
            del value[key]
        else:
            value[key] = new
    return orjson.dumps(value)


# reason -> a maker of the i-th bad message of that kind (topic suffix, bytes)
BAD: dict[str, Callable[[int], tuple[str, bytes]]] = {
    "empty": lambda i: ("web.click", b""),
    "not_utf8": lambda i: ("web.click", b"\xff\xfe{" + str(i).encode()),
    "not_json": lambda i: ("web.click", b'{"uid": "u%d", "type": "cli' % i),
    "not_object": lambda i: ("app.click", b"[1, %d]" % i),
    "missing_field": lambda i: ("web.click", _web(i, item_id=...)),
    "empty_id": lambda i: ("web.click", _web(i, item_id="")),
    "blank_id": lambda i: ("web.click", _web(i, uid="   ")),
    "oversized_id": lambda i: ("web.click", _web(i, uid="x" * 1100)),
    "control_char": lambda i: ("web.click", _web(i, item_id="a\x00b")),
    "bad_timestamp": lambda i: ("web.click", _web(i, ts="NaN")),
    "timestamp_out_of_range": lambda i: ("web.click", _web(i, ts=NOW + 10 * 86_400_000)),
    "unknown_action": lambda i: ("web.click", _web(i, type="like")),
    "negative_price": lambda i: ("web.purchase", _web(i, type="purchase", price=-3.5)),
    "negative_quantity": lambda i: ("web.purchase", _web(i, type="purchase", qty=-1)),
    "bad_id": lambda i: ("web.click", _web(i, uid=True)),
    "bad_envelope": lambda i: ("web.click", orjson.dumps({"events": {"not": "a list"}})),
}


def test_thirty_percent_malformed_keeps_the_good_flowing(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    settings = chaos_settings(batch_size=200)
    traffic = synthetic(users=60, events=700, seed=59)
    good = raw_events(traffic.produced)
    reasons = list(BAD)
    bad = [(reasons[i % len(reasons)], *BAD[reasons[i % len(reasons)]](i)) for i in range(300)]
    mixed: list[Any] = [*good, *bad]
    random.Random(59).shuffle(mixed)
    ensure_topics(settings, worker_topics(settings))
    topic_of = raw_topic_map(settings)
    prefix = next(iter(topic_of.values())).rsplit(".events.", 1)[0]
    producer = KafkaProducer(**kafka_python_options(settings), linger_ms=5)
    sent = []
    for item in mixed:
        if isinstance(item, RawEvent):
            sent.append(producer.send(topic_of[item.topic], key=item.key.encode(), value=orjson.dumps(item.value)))
        else:
            sent.append(producer.send(f"{prefix}.events.{item[1]}", key=b"bad", value=item[2]))
    producer.flush()
    producer.close()
    # Not sent: a message over 1 MiB ("oversized_message"); the embedded Tansu broker hangs the producer on it.
    assert all(f.succeeded() for f in sent), "the broker took every message"
    links = [p for p in traffic.produced if not isinstance(p, RawEvent)]
    produce_events(settings, links)

    with WorkerProcess(settings, tmp_path, name="bad-input") as worker:
        wait_for_oracle(settings, version, traffic.oracle)
        wait_until(lambda: len(dlq(settings)) >= len(bad), 60, interval=1.0, what="every bad message dead-lettered")
        _, text = worker.get("/metrics")
    dead = dlq(settings)
    got = Counter(d["error_class"] for d in dead)
    want = Counter(reason for reason, _, _ in bad)
    share = len(bad) / (len(bad) + len(good))
    report("bad input at scale", messages=len(mixed), bad=len(bad), bad_share=f"{share:.0%}", reasons=len(want),
           good_events=len(good), profiles=stored_counts(settings, version)[0], dlq=len(dead),
           rejected_metric=int(metric_value(text, "interest_events_rejected_total")))
    assert got == want, (got - want, want - got)
    assert all(d["error_message"] and d["source_topic"].startswith(prefix) for d in dead)
    by_reason = {d["error_class"]: d for d in dead}
    assert by_reason["unknown_action"]["error_message"] == "unknown action 'like' for platform web" or \
        "unknown action 'like'" in by_reason["unknown_action"]["error_message"]


async def _seed_other_version(settings: Settings, person: str) -> None:
    """A row of an older model version, as a worker of that version would have left it."""
    store = open_store(settings)
    await store.open()
    try:
        rows = await store.get_profiles(person)
        row = rows[0]
        old = Profile(person, "v-old", row.vector, row.event_count, row.first_ts_ms, row.last_ts_ms,
                      dict(row.platforms), row.write_ts - 1, row.updated_ms)
        await store.write_batch(StoreBatch(profiles=[old]))
    finally:
        await store.close()


async def _erased_view(settings: Settings, person: str, devices: list[str]) -> dict[str, Any]:
    store = open_store(settings)
    await store.open()
    try:
        states: dict[str, PersonState] = await store.load_states([person])
        marks = await store.load_erasures([person])
        return {"profiles": await store.get_profiles(person), "state": states.get(person),
                "links": await store.resolve_links(devices), "marker": marks.get(person)}
    finally:
        await store.close()


def test_forget_erases_everywhere_and_a_late_event_does_not_resurrect(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    import asyncio

    _, version = model_registry
    settings = chaos_settings()
    person, device = "u-forget", "dev-forget"
    web = [RawEvent(f"events.web.{a}", device, {"eid": f"f{i}", "anon_id": device, "type": raw, "item_id": f"i{i}",
                                                  "ts": NOW - 50_000 + i}, person, NOW)
           for i, (a, raw) in enumerate([("click", "click"), ("browse", "view")])]
    app = RawEvent("events.app.click", person, {"event_id": "f9", "user_id": person, "event": "tap", "sku": "s1",
                                                 "time": (NOW - 40_000) / 1000}, person, NOW)
    link = ("link", {"platform": "web", "device_id": device, "person_id": person, "ts_ms": NOW - 45_000})
    with WorkerProcess(settings, tmp_path, name="forget") as worker:
        produce_events(settings, [*web, app, link])
        wait_for_oracle(settings, version, synthetic_oracle([*web, app, link]))
        asyncio.run(_seed_other_version(settings, person))
        proc = interest(settings, "forget", person)
        assert proc.returncode == 0, proc.stderr
        receipt = json.loads(proc.stdout.strip().splitlines()[-1])
        view = asyncio.run(_erased_view(settings, person, [f"anon:web:{device}"]))
        # A late event (before the erasure) from the linked device and from the app must not bring them back.
        late = [RawEvent("events.web.click", device, {"eid": "late1", "anon_id": device, "type": "click",
                                                       "item_id": "i7", "ts": NOW - 30_000}, person, NOW),
                RawEvent("events.app.click", person, {"event_id": "late2", "user_id": person, "event": "tap",
                                                       "sku": "s2", "time": (NOW - 20_000) / 1000}, person, NOW)]
        produce_events(settings, late)
        wait_until(lambda: metric_value(worker.get("/metrics")[1] or "", "interest_events_erased_total") >= 1, 60,
                   what="the late event was dropped as erased")
        time.sleep(2)  # let any (wrong) write of the late events land before looking
        after = asyncio.run(_erased_view(settings, person, []))
        dropped = metric_value(worker.get("/metrics")[1], "interest_events_erased_total")
    report("forget", receipt=receipt, late_events=len(late), late_dropped=int(dropped),
           profiles_after=len(after["profiles"]), state_after=after["state"] is not None)
    assert receipt["receipt"] == "erasure" and receipt["person_id"] == person
    assert receipt["profiles_deleted"] == 2 and receipt["sequence_deleted"] and receipt["links_deleted"] == 1
    assert receipt["workers_notified"] is True
    assert view["profiles"] == [] and view["state"] is None and view["links"] == {}
    assert view["marker"] is not None
    assert after["profiles"] == [] and after["state"] is None, "a late event resurrected an erased person"


def synthetic_oracle(produced: list[Any]) -> Any:
    from testkit.oracle import expected_profiles

    return expected_profiles(produced)
