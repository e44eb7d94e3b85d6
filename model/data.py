"""Loading training/evaluation events and the fixed leave-two-out split.

Accepted inputs (canonical events, one per row):

* CSV with a header, or JSON lines, with at least ``user_id`` (or
  ``person_id``), ``item_id`` and ``timestamp`` (or ``ts_ms`` /
  ``event_time``); ``platform``, ``action``, ``weight`` and ``event_id`` are
  optional.  Timestamps may be numbers (unit auto-detected from magnitude, or
  forced with ``time_unit``) or ISO-8601 strings.
* RecBole atomic ``.inter`` files (tab-separated, typed header such as
  ``user_id:token item_id:token rating:float timestamp:float``, seconds),
  e.g. the MovieLens-100K copy shipped inside the ``recbole`` package.

Everything becomes per-person lists of :class:`SeqEvent` in event-time
order, ties kept in file order (``event_id`` is the zero-padded row number
when the file has none, so ``SeqEvent.sort_key`` agrees).  Numpy-free and
torch-free on purpose: it is plain parsing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.sequence import SeqEvent

TIME_UNITS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
_USER_KEYS = ("user_id", "person_id", "user")
_ITEM_KEYS = ("item_id", "item")
_TIME_KEYS = ("timestamp", "ts_ms", "event_time", "time", "ts")

Sequences = dict[str, list[SeqEvent]]


def movielens_path() -> Path:
    """The MovieLens-100K ``.inter`` file shipped with recbole (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the recbole package (which ships ml-100k) is not installed")
    for root in spec.submodule_search_locations:
        path = Path(root) / "dataset_example" / "ml-100k" / "ml-100k.inter"
        if path.exists():
            return path
    raise FileNotFoundError("ml-100k.inter not found inside the recbole package")


def _pick(row: Mapping[str, Any], keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return row[key]
    raise ValueError(f"event has no {what} field (tried {', '.join(keys)}): {dict(row)!r}")


def detect_time_unit(values: Iterable[float]) -> str:
    """Guess s / ms / us / ns from the magnitude of epoch timestamps (max over all rows)."""
    top = max((abs(v) for v in values), default=0.0)
    if top < 1e11:  # seconds until the year 5138
        return "s"
    if top < 1e14:
        return "ms"
    if top < 1e17:
        return "us"
    return "ns"


def _parse_time(value: Any) -> float | str:
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text  # ISO string, converted later


def _iso_ms(text: str) -> int:
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(round(stamp.timestamp() * 1000))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.lstrip().startswith("{"):
            return [json.loads(line) for line in handle if line.strip()]
        if path.suffix == ".inter" or ("\t" in first and ":" in first.split("\t")[0]):
            reader = csv.reader(handle, delimiter="\t")
            header = [h.split(":", 1)[0] for h in next(reader)]
            return [dict(zip(header, rec, strict=False)) for rec in reader if rec]
        return list(csv.DictReader(handle))


def events_from_rows(rows: Iterable[Mapping[str, Any]], time_unit: str | None = None) -> Sequences:
    """Canonical per-person sequences from dict rows (file rows or in-memory events)."""
    parsed: list[tuple[str, str, float | str, str, str, float, str | None]] = []
    for row in rows:
        parsed.append(
            (
                str(_pick(row, _USER_KEYS, "user_id")),
                str(_pick(row, _ITEM_KEYS, "item_id")),
                _parse_time(_pick(row, _TIME_KEYS, "timestamp")),
                str(row.get("action") or "click"),
                str(row.get("platform") or "web"),
                float(row.get("weight") or 1.0),
                None if row.get("event_id") in (None, "") else str(row["event_id"]),
            )
        )
    numeric = [p[2] for p in parsed if isinstance(p[2], float)]
    unit = time_unit or detect_time_unit(numeric)
    if unit not in TIME_UNITS:
        raise ValueError(f"time unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
    factor = TIME_UNITS[unit]
    width = max(9, len(str(len(parsed))))
    people: Sequences = {}
    for n, (user, item, stamp, action, platform, weight, event_id) in enumerate(parsed):
        ts_ms = int(round(stamp * factor)) if isinstance(stamp, float) else _iso_ms(stamp)
        eid = event_id if event_id is not None else f"{n:0{width}d}"
        people.setdefault(user, []).append(SeqEvent(eid, ts_ms, item, action, platform, weight))
    for seq in people.values():
        seq.sort(key=lambda e: e.ts_ms)  # stable: ties stay in file order
    return people


def load_events(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]], time_unit: str | None = None
) -> Sequences:
    """Per-person sequences from a path (CSV / JSONL / ``.inter``) or an iterable of dicts."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"events file not found: {path}")
        return events_from_rows(_read_rows(path), time_unit)
    return events_from_rows(source, time_unit)


@dataclass(frozen=True)
class Split:
    """The fixed protocol: per person, last event = test, one before = validation.

    People with fewer than 3 events are left out of evaluation (their events
    still train the model).  ``between`` holds, per person, events that fall
    between the validation and the test target without being targets (other
    platforms' events in a :func:`platform_split`); empty for leave-two-out.
    """

    train: Sequences
    valid: dict[str, SeqEvent]
    test: dict[str, SeqEvent]
    between: Sequences = field(default_factory=dict)
    platform: str | None = None

    def history(self, person: str, target: str) -> list[SeqEvent]:
        """Events before the target: ``train`` for validation, ``train + valid (+ between)`` for test."""
        if target == "valid":
            return self.train[person]
        return [*self.train[person], self.valid[person], *self.between.get(person, ())]


def leave_two_out(people: Sequences) -> Split:
    train: Sequences = {}
    valid: dict[str, SeqEvent] = {}
    test: dict[str, SeqEvent] = {}
    for person, seq in people.items():
        if len(seq) < 3:
            train[person] = list(seq)
            continue
        train[person] = seq[:-2]
        valid[person] = seq[-2]
        test[person] = seq[-1]
    return Split(train, valid, test)


def platform_split(people: Sequences, platform: str) -> Split:
    """Leave-two-out on one platform's events, with the whole cross-platform sequence as input.

    Per person, the last event on ``platform`` is the test target and the one
    before it on ``platform`` the validation target; the training part is
    every event (any platform) before the validation target, and the test
    history adds every event between the two targets.  Events after the test
    target are left out.  People with fewer than 3 events on the platform are
    kept for training only, like short people in :func:`leave_two_out`.  Why
    this shape: a platform model is asked "what will this person do next
    *here*, given everything they did everywhere", which is what serving a
    platform's vector answers.
    """
    train: Sequences = {}
    valid: dict[str, SeqEvent] = {}
    test: dict[str, SeqEvent] = {}
    between: Sequences = {}
    for person, seq in people.items():
        here = [i for i, e in enumerate(seq) if e.platform == platform]
        if len(here) < 3:
            train[person] = list(seq)
            continue
        v, t = here[-2], here[-1]
        train[person] = seq[:v]
        valid[person] = seq[v]
        test[person] = seq[t]
        if t > v + 1:
            between[person] = seq[v + 1 : t]
    return Split(train, valid, test, between, platform)


def refit_split(split: Split) -> Split:
    """The training part grown by each person's validation target (and what lies between it and the test).

    For a second training run once the epoch count is chosen: every event before the test target is
    training data, the test target is still never seen, and there is nothing left to validate on.
    """
    train = {p: split.history(p, "test") if p in split.test else list(seq) for p, seq in split.train.items()}
    return Split(train, {}, dict(split.test), {}, split.platform)


def split_for(people: Sequences, platform: str | None = None) -> Split:
    """The evaluation split of the shared model (``None``) or of one platform."""
    return leave_two_out(people) if platform is None else platform_split(people, platform)


def time_window(people: Sequences) -> dict[str, int]:
    """First and last event time (ms) and counts, for the manifest's training window."""
    stamps = [e.ts_ms for seq in people.values() for e in seq]
    return {
        "first_ts_ms": min(stamps, default=0),
        "last_ts_ms": max(stamps, default=0),
        "events": len(stamps),
        "people": len(people),
    }
