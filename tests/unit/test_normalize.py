"""Validation through `interest normalize`: every bad input gets its specific error."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from schemas.adapters import load_adapters
from schemas.normalize import Normalizer, decode_link

NOW_MS = int(time.time() * 1000)
GOOD = {"eid": "e1", "uid": "u1", "type": "click", "item_id": "i1", "ts": NOW_MS - 1000}


def web(**changes: object) -> bytes:
    value = {**GOOD, **changes}
    for key in [k for k, v in changes.items() if v is ...]:
        del value[key]
    return orjson.dumps(value)


# (raw line, expected reason, a fragment the message must contain)
CASES: list[tuple[bytes, str, str]] = [
    (b"", "empty", "empty message"),
    (b"\xff\xfe{}", "not_utf8", "invalid byte 0xff at position 0"),
    (b'{"uid": "u1", "type": "cli', "not_json", "not JSON"),
    (b"[1, 2]", "not_object", "got array"),
    (b"42", "not_object", "got int"),
    (web(item_id=...), "missing_field", "missing field 'item_id'"),
    (web(uid=..., eid="e2"), "missing_field", "uid or anon_id"),
    (web(item_id="", eid="e3"), "empty_id", "field 'item_id' is empty"),
    (web(uid="   ", eid="e4"), "blank_id", "field 'uid' is only whitespace"),
    (web(uid="x" * 1100, eid="e5"), "oversized_id", "1100 bytes, over the 1024-byte limit"),
    (web(item_id="a\x00b", eid="e6"), "control_char", "U+0000"),
    (web(uid="a\x07b", eid="e7"), "control_char", "U+0007"),
    (web(ts=-5, eid="e8"), "bad_timestamp", "negative"),
    (web(ts="NaN", eid="e9"), "bad_timestamp", "must be a number, got str 'NaN'"),
    (web(ts=NOW_MS + 10 * 86_400_000, eid="e10"), "timestamp_out_of_range", "in the future"),
    (web(ts="1700000000000", eid="e11"), "bad_timestamp", "must be a number"),
    (web(ts=(NOW_MS - 1000) // 1000, eid="e12"), "timestamp_out_of_range", "it looks like unit s"),
    (web(type="like", eid="e13"), "unknown_action", "unknown action 'like' for platform web"),
    (web(price=-3.5, eid="e14"), "negative_price", "price -3.5 is negative"),
    (web(qty=-1, eid="e15"), "negative_quantity", "quantity -1 is negative"),
    (web(uid=True, eid="e16"), "bad_id", "must be a string or integer"),
    (web(), "duplicate_event_id", "duplicate event_id 'e1' (first seen on line 1)"),
]


def run_normalize(tmp_path: Path, lines: list[bytes], platform: str = "web") -> tuple[list[dict], list[dict], int]:
    dlq = tmp_path / "dlq.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "interest.cli", "normalize", "--platform", platform, "--dlq", str(dlq)],
        input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60,
    )
    good = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    bad = [json.loads(x) for x in dlq.read_text().splitlines()] if dlq.exists() else []
    return good, bad, proc.returncode


def test_every_bad_input_gets_its_specific_error(tmp_path: Path) -> None:
    lines = [web()] + [raw for raw, _, _ in CASES] + [web(eid="last")]
    good, bad, code = run_normalize(tmp_path, lines)
    assert code == 0
    assert [g["event_id"] for g in good] == ["e1", "last"], "good lines before and after bad ones flow"
    assert len(bad) == len(CASES), [b["error"] for b in bad]
    for (raw, reason, fragment), record in zip(CASES, bad, strict=True):
        assert record["reason"] == reason, (raw, record)
        assert fragment in record["error"], (raw, record)
        assert record["raw"] == raw.decode("utf-8", errors="backslashreplace")


def test_unknown_platform_is_an_argument_error(tmp_path: Path) -> None:
    _, _, code = run_normalize(tmp_path, [web()], platform="fax")
    assert code == 2


@pytest.mark.parametrize(
    ("platform", "raw", "expected"),
    [
        ("web", {"uid": "u", "type": "pageview", "item_id": 7, "ts": NOW_MS}, ("u", "browse", "7", NOW_MS)),
        ("app", {"device_id": "d", "event": "buy", "sku": "s", "time": NOW_MS / 1000, "amount": 3},
         ("anon:app:d", "purchase", "s", NOW_MS)),
        ("mini", {"unionid": "un", "openid": "op", "act": "tap", "goods_id": "g",
                  "time": "2026-01-02T03:04:05.250+08:00"}, ("un", "click", "g", 1767294245250)),
        ("tv", {"device": {"serial": "SN1"}, "action": "watch", "content": {"id": "c9"}, "ts_us": NOW_MS * 1000},
         ("anon:tv:SN1", "browse", "c9", NOW_MS)),
    ],
)
def test_four_platforms_map_to_one_canonical_form(platform: str, raw: dict, expected: tuple) -> None:
    decoded = Normalizer(load_adapters()).decode(orjson.dumps(raw), platform)
    assert not decoded.rejected, decoded.rejected
    event = decoded.events[0]
    assert (event.person_id, event.action, event.item_id, event.ts_ms) == expected
    assert event.platform == platform


def test_mini_price_in_fen_becomes_currency_units() -> None:
    raw = {"unionid": "u", "act": "pay", "goods_id": "g", "time": "2026-01-02T03:04:05Z", "price_fen": 1999}
    event = Normalizer(load_adapters()).decode(orjson.dumps(raw), "mini").events[0]
    assert event.price == pytest.approx(19.99)


def test_envelope_keeps_good_elements_and_rejects_bad_ones_individually() -> None:
    envelope = {"anon_id": "dev-1", "events": [
        {"type": "click", "item_id": "a", "ts": NOW_MS},
        {"type": "warp", "item_id": "b", "ts": NOW_MS},
        "oops",
        {"type": "view", "item_id": "c", "ts": NOW_MS, "uid": "u7"},
    ]}
    decoded = Normalizer(load_adapters()).decode(orjson.dumps(envelope), "web")
    assert [(e.person_id, e.item_id) for e in decoded.events] == [("anon:web:dev-1", "a"), ("u7", "c")]
    assert [(r.index, r.reason) for r, _ in decoded.rejected] == [(1, "unknown_action"), (2, "not_object")]
    assert str(decoded.rejected[0][0]).startswith("events[1]: unknown action 'warp'")


def test_missing_event_id_is_derived_deterministically() -> None:
    raw = orjson.dumps({"uid": "u", "type": "click", "item_id": "i", "ts": NOW_MS})
    norm = Normalizer(load_adapters())
    first, second = norm.decode(raw, "web").events[0], norm.decode(raw, "web").events[0]
    assert first.event_id == second.event_id and first.event_id.startswith("h:")


def test_identity_link_validation() -> None:
    platforms = {"web", "app"}
    link = {"platform": "web", "device_id": "d", "person_id": "u", "ts_ms": NOW_MS}
    ok = decode_link(orjson.dumps(link), platforms)
    assert not hasattr(ok, "reason") and ok.anon_person_id == "anon:web:d"  # type: ignore[union-attr]
    for ts in (5, NOW_MS * 1000, NOW_MS + 2 * 86_400_000):  # not ms, microseconds, days ahead
        assert getattr(decode_link(orjson.dumps({**link, "ts_ms": ts}), platforms), "reason", None) == "bad_timestamp"
    bad = decode_link(orjson.dumps({"platform": "fax", "device_id": "d", "person_id": "u", "ts_ms": 5}), platforms)
    assert getattr(bad, "reason", None) == "unknown_platform"
    bad = decode_link(orjson.dumps({"platform": "web", "device_id": "d", "ts_ms": 5}), platforms)
    assert "missing field 'person_id'" in str(bad)
