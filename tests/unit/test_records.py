"""The person-topic record contract: one codec, one owner, one partition function, one anon-id pair."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from kafka.partitioner.default import murmur2

from schemas.events import CanonicalEvent, IdentityLink, anon_person_id, parse_anon_id
from schemas.records import (
    ENVELOPE_MAX_RECORDS,
    ForgetRequest,
    decode_envelope,
    encode_envelope,
    envelopes,
    person_partition,
    record_owner,
)

EVENT = CanonicalEvent("e1", "p1", "web", "u1", "click", "i1", 1_700_000_000_000, 2.0, dwell_ms=5,
                       attributes={"page": "home"})
LINK = IdentityLink("app", "dev:7", "p1", 1_700_000_000_500)
FORGET = ForgetRequest("p1", 1_700_000_001_000)


def test_every_kind_survives_the_wire_unchanged() -> None:
    assert decode_envelope(encode_envelope([EVENT, LINK, FORGET])) == [EVENT, LINK, FORGET]
    stamped = dataclasses.replace(EVENT, produced_ms=1_700_000_000_123)  # the ingest stage's Kafka timestamp
    assert decode_envelope(encode_envelope([stamped])) == [stamped]


def test_the_wire_form_is_the_documented_one() -> None:
    wire = orjson.loads(encode_envelope([EVENT, LINK, FORGET]))["r"]
    assert [r["k"] for r in wire] == ["e", "l", "f"]
    assert wire[2] == {"k": "f", "person_id": "p1", "erased_ms": 1_700_000_001_000}


@pytest.mark.parametrize(("raw", "says"), [
    (b"", "empty"),
    (b'{"x": []}', "'r' must be a list"),
    (b'{"r": [{"k": "z"}]}', "unknown person-topic record kind"),
    (b'{"r": [{"k": "f", "person_id": "p"}]}', "erased_ms"),
    (b'{"r": [7]}', "must be an object"),
])
def test_bytes_we_did_not_write_are_refused_with_the_reason(raw: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        decode_envelope(raw)


def test_a_link_is_owned_by_the_device_and_the_rest_by_the_person() -> None:
    assert record_owner(LINK) == anon_person_id("app", "dev:7") == "anon:app:dev:7"
    assert record_owner(EVENT) == record_owner(FORGET) == "p1"


def test_anon_ids_parse_back_and_persons_do_not() -> None:
    assert parse_anon_id(anon_person_id("tv", "a:b")) == ("tv", "a:b")
    assert parse_anon_id("p1") is None
    assert parse_anon_id("anon:broken") is None


def test_the_partition_is_kafkas_murmur2_of_the_owner() -> None:
    for person in ["p1", "anon:web:d1", "ü-unicode", ""]:
        assert person_partition(person, 8) == (murmur2(person.encode()) & 0x7FFFFFFF) % 8


def test_envelopes_are_capped_and_each_goes_to_its_owners_partition() -> None:
    events = [CanonicalEvent(f"e{i}", f"p{i % 3}", "web", "u", "click", "i", i) for i in range(1201)]
    out = list(envelopes(events, 4))
    seen = []
    for part, raw in out:
        records = decode_envelope(raw)
        assert len(records) <= ENVELOPE_MAX_RECORDS
        assert all(person_partition(record_owner(r), 4) == part for r in records)
        seen.extend(records)
    assert sorted(r.event_id for r in seen if isinstance(r, CanonicalEvent)) == sorted(e.event_id for e in events)
