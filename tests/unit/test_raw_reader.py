"""The batch reader's two pure steps: merging fetched partitions by time, and what a batch commits."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiokafka import TopicPartition

from streams.raw_reader import next_offsets, to_messages
from streams.stages import RawMessage


def _of(msg: RawMessage, tp: TopicPartition) -> bool:
    return (msg.source.topic, msg.source.partition) == (tp.topic, tp.partition)


@dataclass
class Rec:
    offset: int
    timestamp: int
    key: bytes = b"k"
    value: bytes = b"{}"


def fetched(seed: int, partitions: int = 6, per: int = 40) -> dict[TopicPartition, list[Rec]]:
    rng = random.Random(seed)
    out = {}
    for p in range(partitions):
        t, recs = rng.randrange(1000), []
        for off in range(100 + p, 100 + p + per):
            t += rng.choice([0, 0, 1, 5, 30])  # ties, and out of step with the other partitions
            recs.append(Rec(off, t))
        out[TopicPartition(f"events.p{p % 3}.click", p)] = recs
    return out


def test_merge_orders_by_time_and_keeps_each_partitions_offset_order() -> None:
    for seed in range(20):
        records = fetched(seed)
        messages = to_messages(records)
        assert len(messages) == sum(len(v) for v in records.values())
        stamps = [m.produced_ms for m in messages]
        assert stamps == sorted(stamps)  # partitions interleaved by time, not drained one after another
        for tp, recs in records.items():
            mine = [m.source.offset for m in messages if _of(m, tp)]
            assert mine == [r.offset for r in recs]


def test_each_batch_commits_a_prefix_of_every_partition() -> None:
    """Cut the merged list anywhere: committing batch by batch never passes an unprocessed record."""
    records = fetched(7)
    messages = to_messages(records)
    for size in (1, 7, 50, 1000):
        committed: dict[TopicPartition, int] = {}
        for start in range(0, len(messages), size):
            batch = messages[start : start + size]
            committed.update(next_offsets(batch))
            done = messages[: start + size]
            for tp, offset in committed.items():
                processed = {m.source.offset for m in done if _of(m, tp)}
                assert all(o in processed for o in range(min(r.offset for r in records[tp]), offset))
        assert committed == {tp: recs[-1].offset + 1 for tp, recs in records.items()}


def test_a_record_without_timestamp_keeps_its_place_and_reads_as_unknown() -> None:
    tp = TopicPartition("events.web.click", 0)
    messages = to_messages({tp: [Rec(0, -1), Rec(1, 5)]})
    assert [m.source.offset for m in messages] == [0, 1]
    assert messages[0].produced_ms is None and messages[1].produced_ms == 5


def test_a_reader_told_to_stop_before_it_began_never_joins_and_does_not_wait_out_the_grace() -> None:
    """A SIGTERM while the store or the model is still opening: nothing was fetched, so nothing to finish."""
    import asyncio

    from schemas.settings import Settings
    from streams.raw_reader import RawReader

    async def go() -> RawReader:
        reader = RawReader(Settings(), stage=None, stopping=lambda: False)  # type: ignore[arg-type]
        await asyncio.wait_for(reader.stop(grace_s=60), timeout=10)  # not the 60 s grace
        await asyncio.wait_for(reader.run(), timeout=10)  # the ready wait ended after the stop
        return reader

    assert asyncio.run(go()).consumer is None  # no consumer made, no group joined
