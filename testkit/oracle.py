"""The oracle: what every profile must be, computed from the produced events alone.

A pure function of the produced raw events and identity links, independent
of the worker's batching, arrival order, crashes and replays.  Fault tests
compare the store with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from interest.synthetic import RawEvent
from schemas.adapters import load_adapters
from schemas.normalize import Normalizer


@dataclass
class Expected:
    event_ids: set[str] = field(default_factory=set)
    platforms: set[str] = field(default_factory=set)
    last_ts_ms: int = 0
    items: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, event_id, item)

    @property
    def count(self) -> int:
        return len(self.event_ids)

    def window(self, n: int) -> list[str]:
        """Event ids of the newest ``n`` events in event-time order (the sequence)."""
        return [eid for _, eid, _ in sorted(self.items)[-n:]]


def expected_profiles(produced: Iterable[RawEvent | tuple[str, dict[str, Any]]]) -> dict[str, Expected]:
    """Person id -> what their profile must show once everything is processed."""
    normalizer = Normalizer(load_adapters())
    links: dict[str, str] = {}
    events = []
    for item in produced:
        if isinstance(item, RawEvent):
            platform, action = item.topic.split(".")[-2], item.topic.split(".")[-1]
            decoded = normalizer.decode(orjson.dumps(item.value), platform, action)
            events.extend(decoded.events)
        else:
            link = item[1]
            links[f"anon:{link['platform']}:{link['device_id']}"] = str(link["person_id"])
    out: dict[str, Expected] = {}
    for event in events:
        person = links.get(event.person_id, event.person_id)
        exp = out.setdefault(person, Expected())
        if event.event_id in exp.event_ids:
            continue
        exp.event_ids.add(event.event_id)
        exp.platforms.add(event.platform)
        exp.last_ts_ms = max(exp.last_ts_ms, event.ts_ms)
        exp.items.append((event.ts_ms, event.event_id, event.item_id))
    return out
