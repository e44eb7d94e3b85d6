"""Raw Kafka message bytes -> canonical events or specific rejections.

One message may hold one event (a JSON object) or an envelope of many
(``{"events": [...], ...shared fields}``), because trackers batch.  The
envelope's other top-level fields are defaults for every element (a tracker
sends the device id once per batch).  Each element succeeds or fails on its
own: one bad element never costs the good ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas.adapters import MAX_FUTURE_MS, MAX_ID_BYTES, MIN_TS_MS, PlatformAdapter, _Invalid, now_ms
from schemas.events import CanonicalEvent, IdentityLink, Rejected

MAX_MESSAGE_BYTES = 1 << 20
MAX_ENVELOPE_EVENTS = 10_000
MAX_JSON_DEPTH = 1024  # orjson's own parse limit; deeper input is rejected as ``too_deep``


@dataclass(frozen=True, slots=True)
class Decoded:
    """Outcome of one message: events and per-element rejections."""

    events: list[CanonicalEvent]
    rejected: list[tuple[Rejected, bytes]]  # (why, the element's own bytes or the whole message)


def decode_json(raw: bytes | None) -> Any | Rejected:
    """Bytes -> JSON value, or a Rejected naming the exact problem."""
    if raw is None or len(raw) == 0:
        return Rejected("empty", "empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejected("oversized_message", f"message is {len(raw)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            bad = raw[uexc.start]
            return Rejected("not_utf8", f"not UTF-8: invalid byte 0x{bad:02x} at position {uexc.start}")
        if not raw.strip():
            return Rejected("empty", "message is only whitespace")
        if "depth limit" in str(exc) or "ecursion" in str(exc):  # orjson refuses nesting deeper than 1024
            return Rejected("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels: {exc}")
        return Rejected("not_json", f"not JSON: {exc}")


class _Rejections:
    """An envelope's rejected elements, each with the bytes the DLQ keeps of it: its own JSON.

    orjson reads 1024 levels but writes only 254: an element too deep to write
    again is dead-lettered as the whole message instead of raising (which would
    cost the good elements).  The whole message is kept once; later such
    elements point at that record, so a message of 2,000 deep elements cannot
    become 2,000 copies of itself.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.items: list[tuple[Rejected, bytes]] = []
        self.whole_at: int | None = None

    def add(self, why: Rejected, value: Any) -> None:
        try:
            self.items.append((why, orjson.dumps(value)))
            return
        except TypeError:  # orjson.JSONEncodeError
            pass
        if self.whole_at is None:
            self.whole_at = why.index
            self.items.append((why, self.raw))
        else:
            note = f"{why.message} (too deep to write alone; the message is in the record of events[{self.whole_at}])"
            self.items.append((Rejected(why.reason, note, why.index), b""))


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return type(value).__name__


class Normalizer:
    """Normalises raw messages with the configured platform adapters."""

    def __init__(self, adapters: dict[str, PlatformAdapter]) -> None:
        self.adapters = adapters

    def unknown_platform(self, platform: str) -> Rejected:
        known = ", ".join(sorted(self.adapters))
        return Rejected("unknown_platform", f"unknown platform {platform!r} (known: {known})")

    def decode(
        self, raw: bytes | None, platform: str, topic_action: str | None = None, now: int | None = None,
        produced_ms: int | None = None,
    ) -> Decoded:
        """``produced_ms`` (the Kafka record's timestamp) is stamped on every event the message holds."""
        adapter = self.adapters.get(platform)
        if adapter is None:
            return Decoded([], [(self.unknown_platform(platform), raw or b"")])
        value = decode_json(raw)
        if isinstance(value, Rejected):
            return Decoded([], [(value, raw or b"")])
        if not isinstance(value, dict):
            why = Rejected(
                "not_object", f"expected a JSON object or an envelope {{\"events\": [...]}}, got {_kind(value)}"
            )
            return Decoded([], [(why, raw or b"")])
        now = now_ms() if now is None else now
        if "events" not in value:
            try:
                return Decoded([adapter.to_canonical(value, topic_action, now, produced_ms)], [])
            except _Invalid as exc:
                return Decoded([], [(Rejected(exc.reason, exc.message), raw or b"")])
        return self._envelope(adapter, value, topic_action, now, raw or b"", produced_ms)

    def _envelope(
        self, adapter: PlatformAdapter, value: dict[str, Any], topic_action: str | None, now: int, raw: bytes,
        produced_ms: int | None = None,
    ) -> Decoded:
        items = value["events"]
        if not isinstance(items, list):
            return Decoded([], [(Rejected("bad_envelope", f"'events' must be an array, got {_kind(items)}"), raw)])
        if len(items) > MAX_ENVELOPE_EVENTS:
            why = Rejected("bad_envelope", f"envelope has {len(items)} events, over {MAX_ENVELOPE_EVENTS}")
            return Decoded([], [(why, raw)])
        shared = {k: v for k, v in value.items() if k != "events"}
        events: list[CanonicalEvent] = []
        rejected = _Rejections(raw)
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                rejected.add(Rejected("not_object", f"expected a JSON object, got {_kind(item)}", index), item)
                continue
            merged = {**shared, **item} if shared else item
            try:
                events.append(adapter.to_canonical(merged, topic_action, now, produced_ms))
            except _Invalid as exc:
                rejected.add(Rejected(exc.reason, exc.message, index), merged)
        return Decoded(events, rejected.items)


def decode_link(raw: bytes | None, platforms: set[str]) -> IdentityLink | Rejected:
    """Parse one ``identity.links`` message.

    Format: ``{"platform": "web", "device_id": "d-1", "person_id": "u-9",
    "ts_ms": 1700000000000}``.
    """
    value = decode_json(raw)
    if isinstance(value, Rejected):
        return value
    if not isinstance(value, dict):
        return Rejected("not_object", f"expected a JSON object, got {_kind(value)}")
    fields: dict[str, str] = {}
    for name in ("platform", "device_id", "person_id"):
        item = value.get(name)
        if item is None:
            return Rejected("missing_field", f"missing field '{name}' in identity link")
        if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
            return Rejected("bad_id", f"field '{name}' must be a non-empty string, got {item!r}")
        text = str(item)
        if len(text.encode()) > MAX_ID_BYTES or any(ord(c) < 0x20 for c in text):
            return Rejected("bad_id", f"field '{name}' is oversized or has control characters")
        fields[name] = text
    if fields["platform"] not in platforms:
        return Rejected("unknown_platform", f"unknown platform {fields['platform']!r} in identity link")
    ts = value.get("ts_ms")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        return Rejected("bad_timestamp", f"identity link ts_ms must be a non-negative integer, got {ts!r}")
    if ts < MIN_TS_MS or ts > now_ms() + MAX_FUTURE_MS:
        # The same range as events: a link in microseconds would otherwise outrank every real link forever.
        where = "before 2000-01-01" if ts < MIN_TS_MS else "more than a day in the future"
        return Rejected("bad_timestamp", f"identity link ts_ms {ts} is {where} (epoch milliseconds expected)")
    return IdentityLink(fields["platform"], fields["device_id"], fields["person_id"], ts)
