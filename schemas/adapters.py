"""Declarative platform adapters: raw tracker JSON -> ``CanonicalEvent``.

A platform is configuration, not code: a JSON mapping names where the ids,
item, action and time live (dotted paths for nested objects), the time unit
(``s``, ``ms``, ``us`` or ``iso8601``) and the platform's action vocabulary.
The four shipped mappings live in ``schemas/platforms/*.json``; operators add
their own with ``--adapters DIR`` / ``INTEREST_ADAPTERS_DIR``.

Validation returns errors as data (``Rejected``) with a specific message
that names the field and the platform, so the DLQ says exactly what to fix.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from schemas.events import ACTION_WEIGHTS, CanonicalEvent, anon_person_id
from schemas.sequence import ACTIONS

MAX_ID_BYTES = 1024
# C0 controls and DEL; one regex search instead of a Python loop over every character of every id
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f]")
# An event's attributes (page, referrer, ...) serialised may not exceed this: every record then stays far below the
# person topic's envelope budget (``schemas.records.ENVELOPE_MAX_BYTES``), so no single event can make a message
# the producer refuses; a larger one is rejected to the DLQ (never truncated: half a referrer is a wrong one).
MAX_ATTRIBUTES_BYTES = 16 * 1024
# Nesting depth of one attribute value: orjson parses 1024 levels but writes only 254, and a record sits four
# levels down in an envelope, so a deep value that parsed fine would make every later encode of its batch fail.
MAX_ATTRIBUTE_DEPTH = 32
MIN_TS_MS = 946_684_800_000  # 2000-01-01: anything older is a unit mistake or garbage
MAX_FUTURE_MS = 24 * 3600 * 1000
_UNIT_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}
_MISSING = object()


class AdapterConfigError(ValueError):
    """A platform mapping file is wrong (raised at start-up, never per event)."""


def _path(spec: str | None) -> tuple[str, ...] | None:
    return tuple(spec.split(".")) if spec else None


def _get(obj: dict[str, Any], path: tuple[str, ...] | None) -> Any:
    if path is None:
        return _MISSING
    cur: Any = obj
    for key in path:
        if not isinstance(cur, dict):
            return _MISSING
        cur = cur.get(key, _MISSING)
        if cur is _MISSING:
            return _MISSING
    return cur


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (a scalar is 0, ``{}`` is 1), counted level by level up to ``limit + 1``.

    Iterative on purpose: a recursive walk of untrusted input is itself a recursion-limit risk.
    """
    depth, level = 0, [value]
    while depth <= limit:
        children: list[Any] = []
        containers = False
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
                containers = True
            elif isinstance(item, list):
                children.extend(item)
                containers = True
        if not containers:
            return depth
        depth, level = depth + 1, children
    return depth


class _Invalid(Exception):
    """Internal: carries a Rejected out of nested checks."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class PlatformAdapter:
    """One platform's mapping, compiled to tuples of keys for speed."""

    platform: str
    time_unit: str
    time_field: tuple[str, ...]
    item_field: tuple[str, ...]
    person_field: tuple[str, ...] | None
    device_field: tuple[str, ...] | None
    event_id_field: tuple[str, ...] | None
    action_field: tuple[str, ...] | None
    actions: dict[str, str]
    dwell_field: tuple[str, ...] | None = None
    dwell_unit: str = "ms"
    price_field: tuple[str, ...] | None = None
    price_scale: float = 1.0
    quantity_field: tuple[str, ...] | None = None
    attributes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> PlatformAdapter:
        """Validate a mapping up front so a bad config fails at start-up."""
        try:
            platform = str(spec["platform"])
            fields = spec["fields"]
            time_unit = str(spec["time_unit"])
            actions = {str(k): str(v) for k, v in spec["actions"].items()}
        except (KeyError, AttributeError, TypeError) as exc:
            raise AdapterConfigError(f"platform mapping is missing {exc}") from exc
        if time_unit not in ("s", "ms", "us", "iso8601"):
            raise AdapterConfigError(f"platform {platform}: time_unit must be s, ms, us or iso8601")
        bad = sorted(v for v in actions.values() if v not in ACTIONS)
        if bad:
            raise AdapterConfigError(f"platform {platform}: actions map to unknown {bad}; use {ACTIONS}")
        for required in ("time", "item"):
            if not fields.get(required):
                raise AdapterConfigError(f"platform {platform}: fields.{required} is required")
        if not (fields.get("person") or fields.get("device")):
            raise AdapterConfigError(f"platform {platform}: fields.person or fields.device is required")
        return cls(
            platform=platform,
            time_unit=time_unit,
            time_field=tuple(fields["time"].split(".")),
            item_field=tuple(fields["item"].split(".")),
            person_field=_path(fields.get("person")),
            device_field=_path(fields.get("device")),
            event_id_field=_path(fields.get("event_id")),
            action_field=_path(fields.get("action")),
            actions=actions,
            dwell_field=_path(fields.get("dwell")),
            dwell_unit=str(spec.get("dwell_unit", "ms")),
            price_field=_path(fields.get("price")),
            price_scale=float(spec.get("price_scale", 1.0)),
            quantity_field=_path(fields.get("quantity")),
            attributes=tuple(spec.get("attributes", ())),
        )

    def field_name(self, path: tuple[str, ...] | None) -> str:
        return ".".join(path) if path else "?"

    # -- per-event -------------------------------------------------------
    def _id(self, obj: dict[str, Any], path: tuple[str, ...] | None, required: bool) -> str | None:
        value = _get(obj, path)
        name = self.field_name(path)
        if value is _MISSING or value is None:
            if required:
                raise _Invalid("missing_field", f"missing field '{name}' (platform {self.platform})")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _Invalid("bad_id", f"field '{name}' must be a string or integer, got {type(value).__name__}")
        text = str(value)
        if not text:
            raise _Invalid("empty_id", f"field '{name}' is empty (platform {self.platform})")
        if not text.strip():
            raise _Invalid("blank_id", f"field '{name}' is only whitespace (platform {self.platform})")
        if len(text) > MAX_ID_BYTES // 4 or not text.isascii():  # ASCII is a byte a character
            size = len(text.encode("utf-8"))
            if size > MAX_ID_BYTES:
                raise _Invalid("oversized_id", f"field '{name}' is {size} bytes, over the {MAX_ID_BYTES}-byte limit")
        control = _CONTROL_CHAR.search(text)
        if control is not None:
            raise _Invalid("control_char", f"field '{name}' contains control character U+{ord(control[0]):04X}")
        return text

    def _time_ms(self, obj: dict[str, Any], now_ms: int) -> int:
        name = self.field_name(self.time_field)
        value = _get(obj, self.time_field)
        if value is _MISSING or value is None:
            raise _Invalid("missing_field", f"missing field '{name}' (platform {self.platform})")
        if self.time_unit == "iso8601":
            if not isinstance(value, str):
                raise _Invalid(
                    "bad_timestamp",
                    f"timestamp '{name}' for platform {self.platform} must be an ISO-8601 string, "
                    f"got {type(value).__name__} {value!r}",
                )
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise _Invalid("bad_timestamp", f"timestamp {value!r} is not ISO-8601") from None
            if parsed.tzinfo is None:
                raise _Invalid("bad_timestamp", f"timestamp {value!r} has no UTC offset")
            ts_ms = int(parsed.timestamp() * 1000)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(
                    "bad_timestamp",
                    f"timestamp '{name}' in unit {self.time_unit} must be a number, "
                    f"got {type(value).__name__} {value!r}",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise _Invalid("bad_timestamp", f"timestamp '{name}' is {value}")
            if value < 0:
                raise _Invalid("bad_timestamp", f"timestamp {value} (unit {self.time_unit}) is negative")
            ts_ms = int(value * _UNIT_TO_MS[self.time_unit])
        if ts_ms < MIN_TS_MS or ts_ms > now_ms + MAX_FUTURE_MS:
            raise _Invalid("timestamp_out_of_range", self._range_message(value, ts_ms, now_ms))
        return ts_ms

    def _range_message(self, value: Any, ts_ms: int, now_ms: int) -> str:
        where = "before 2000-01-01" if ts_ms < MIN_TS_MS else "more than a day in the future"
        hint = ""
        if self.time_unit != "iso8601":
            for unit, factor in _UNIT_TO_MS.items():
                if unit != self.time_unit and MIN_TS_MS <= value * factor <= now_ms + MAX_FUTURE_MS:
                    hint = f"; it looks like unit {unit}"
                    break
        return f"timestamp {value!r} in unit {self.time_unit} is out of range ({where}){hint}"

    def _number(self, obj: dict[str, Any], path: tuple[str, ...] | None, what: str) -> float | None:
        value = _get(obj, path)
        if value is _MISSING or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid(f"bad_{what}", f"{what} '{self.field_name(path)}' must be a finite number, got {value!r}")
        if value < 0:
            raise _Invalid(f"negative_{what}", f"{what} {value} is negative (platform {self.platform})")
        return float(value)

    def _check_attributes(self, attributes: dict[str, Any]) -> None:
        """Bound what an event carries through the person topic: depth, then serialised size."""
        try:
            size = len(orjson.dumps(attributes))
        except TypeError:  # orjson.JSONEncodeError: nested deeper than orjson writes
            size = -1
        for name, value in attributes.items():
            if isinstance(value, dict | list) and _depth(value, MAX_ATTRIBUTE_DEPTH) > MAX_ATTRIBUTE_DEPTH:
                raise _Invalid("attributes_too_deep", f"attribute '{name}' is nested more than {MAX_ATTRIBUTE_DEPTH}"
                                                      f" levels deep (platform {self.platform})")
        if size < 0:
            raise _Invalid("bad_attributes", f"attributes cannot be serialised (platform {self.platform})")
        if size > MAX_ATTRIBUTES_BYTES:
            sizes = {name: len(orjson.dumps(value)) for name, value in attributes.items()}
            largest = max(sizes, key=sizes.__getitem__)
            raise _Invalid(
                "attributes_too_large",
                f"attributes are {size} bytes serialised, over the {MAX_ATTRIBUTES_BYTES}-byte limit "
                f"(platform {self.platform}; largest: '{largest}', {sizes[largest]} bytes)",
            )

    def to_canonical(self, obj: dict[str, Any], topic_action: str | None, now_ms: int,
                     produced_ms: int | None = None) -> CanonicalEvent:
        """Map one raw JSON object; raises ``_Invalid`` (caught by ``Normalizer``)."""
        person = self._id(obj, self.person_field, required=False)
        device = self._id(obj, self.device_field, required=False)
        if person is None and device is None:
            names = " or ".join(self.field_name(p) for p in (self.person_field, self.device_field) if p)
            raise _Invalid("missing_field", f"missing field {names}: no person or device id (platform {self.platform})")
        item = self._id(obj, self.item_field, required=True)
        raw_action = _get(obj, self.action_field)
        if raw_action is _MISSING or raw_action is None:
            if topic_action is None:
                raise _Invalid("missing_field", f"missing field '{self.field_name(self.action_field)}'")
            action = topic_action
        else:
            mapped = self.actions.get(str(raw_action))
            if mapped is None:
                known = ", ".join(sorted(self.actions))
                raise _Invalid(
                    "unknown_action", f"unknown action {raw_action!r} for platform {self.platform} (known: {known})"
                )
            action = mapped
        ts_ms = self._time_ms(obj, now_ms)
        price = self._number(obj, self.price_field, "price")
        quantity = self._number(obj, self.quantity_field, "quantity")
        dwell = self._number(obj, self.dwell_field, "dwell")
        if person is not None:
            person_id, platform_user_id = person, person
        else:
            assert device is not None
            person_id, platform_user_id = anon_person_id(self.platform, device), device
        event_id = self._id(obj, self.event_id_field, required=False) if self.event_id_field else None
        if event_id is None:
            digest = hashlib.blake2b(
                f"{self.platform}\x00{platform_user_id}\x00{item}\x00{action}\x00{ts_ms}".encode(), digest_size=10
            )
            event_id = "h:" + digest.hexdigest()
        attributes = {}
        for name in self.attributes:
            value = obj.get(name)
            if value is not None:
                attributes[name] = value
        if attributes:
            self._check_attributes(attributes)
        return CanonicalEvent(
            event_id=event_id,
            person_id=person_id,
            platform=self.platform,
            platform_user_id=platform_user_id,
            action=action,
            item_id=item,  # type: ignore[arg-type]
            ts_ms=ts_ms,
            weight=ACTION_WEIGHTS[action],
            dwell_ms=None if dwell is None else int(dwell * (1000 if self.dwell_unit == "s" else 1)),
            price=None if price is None else price * self.price_scale,
            quantity=None if quantity is None else int(quantity),
            attributes=attributes,
            produced_ms=produced_ms,
        )


def load_adapters(extra_dir: str | Path | None = None) -> dict[str, PlatformAdapter]:
    """The shipped platform mappings plus any ``*.json`` in ``extra_dir``."""
    specs: list[dict[str, Any]] = []
    for entry in resources.files("schemas").joinpath("platforms").iterdir():
        if entry.name.endswith(".json"):
            specs.append(orjson.loads(entry.read_bytes()))
    if extra_dir:
        for path in sorted(Path(extra_dir).glob("*.json")):
            specs.append(orjson.loads(path.read_bytes()))
    adapters = {}
    for spec in specs:
        adapter = PlatformAdapter.from_mapping(spec)
        adapters[adapter.platform] = adapter
    return adapters


def now_ms() -> int:
    return int(time.time() * 1000)
