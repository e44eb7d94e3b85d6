"""What the live page shows about one person, assembled from the store and the served model.

Why a module of its own: the page, its JSON API and the test read the same
view; it goes through the store interface (``opened_store``), so it works on
SQLite and Cassandra alike, and through the model runtime the workers use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interest.query_cmd import _iso, top_items
from schemas.sequence import PersonState, Profile

TIMELINE = 50
TOP_K = 10
RETRY_LOAD_S = 30.0  # a version that failed to load is tried again after this



@dataclass
class ModelCache:
    """Loaded runtimes by version: a profile is read in the embedding space of the version that wrote it."""

    registry: str
    pinned: str | None = None
    _runtimes: dict[str, tuple[Any, float]] = field(default_factory=dict)

    def wanted(self) -> str | None:
        """The version the page shows by default: pinned, else the promoted one."""
        from model.registry import Registry

        try:
            return self.pinned or Registry(self.registry).promoted()
        except Exception:  # no registry yet: the page still shows the timeline
            return None

    def get(self, version: str | None) -> Any:
        """The runtime of ``version`` (blocking: verify + load; call it off the event loop)."""
        from model.runtime import EncoderRuntime

        if version is None:
            return None
        hit = self._runtimes.get(version)
        if hit is not None and (hit[0] is not None or time.monotonic() - hit[1] < RETRY_LOAD_S):
            return hit[0]
        try:
            runtime = EncoderRuntime.load(self.registry, version, "no", threads=1)
        except Exception:  # not (yet) in this registry: no recommendations for now, the rest still shows
            runtime = None
        self._runtimes[version] = (runtime, time.monotonic())
        return runtime


@dataclass
class PersonView:
    person_id: str
    found: bool
    model_version: str | None = None
    event_count: int = 0
    updated: str | None = None
    freshness_s: float | None = None  # now - when the worker wrote the vector
    write_latency_ms: float | None = None  # newest event's time -> vector written
    timeline: list[dict[str, Any]] = field(default_factory=list)
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    left_top: list[str] = field(default_factory=list)  # items the last event pushed out of the top
    attribution: dict[str, Any] | None = None
    interests: list[dict[str, Any]] = field(default_factory=list)  # weight, representative items, top items
    signature: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def signature(state: PersonState | None, prof: Profile | None) -> str:
    """Changes whenever the page would: a new event stored or a new vector written."""
    return f"{state.write_ts if state else 0}:{prof.write_ts if prof else 0}:{prof.updated_ms if prof else 0}"


def _top(runtime: Any, vector: np.ndarray, seen: set[str]) -> list[tuple[str, float]]:
    return top_items(vector, runtime.item_ids, runtime.item_matrix, seen, TOP_K)


def build_view(person: str, state: PersonState | None, prof: Profile | None, runtime: Any,
               now_ms: int | None = None) -> PersonView:
    """The whole page's data; the recommendations before the last event come from re-encoding without it."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    view = PersonView(person, found=state is not None or prof is not None, signature=signature(state, prof))
    if state is not None:
        view.event_count = state.event_count
        view.timeline = [{"event_id": e.event_id, "time": _iso(e.ts_ms), "ts_ms": e.ts_ms, "platform": e.platform,
                          "action": e.action, "item_id": e.item_id} for e in reversed(state.events[-TIMELINE:])]
    if prof is not None:
        view.model_version = prof.model_version
        view.event_count = prof.event_count
        view.updated = _iso(prof.updated_ms)
        view.freshness_s = round((now - prof.updated_ms) / 1000, 3)
        view.write_latency_ms = float(prof.updated_ms - prof.last_ts_ms)
        view.interests = [{"weight": round(i.weight, 4), "items": list(i.items)} for i in prof.interests]
    if runtime is None or prof is None or state is None or not state.events:
        return view
    seen = {e.item_id for e in state.events}
    now_top = _top(runtime, prof.vector, seen)
    before = runtime.encode([state.events[:-1]])[0] if len(state.events) > 1 else None
    before_top = {i for i, _ in _top(runtime, before, seen)} if before is not None else set()
    view.recommendations = [{"item_id": i, "score": round(s, 4), "new": bool(before_top) and i not in before_top}
                            for i, s in now_top]
    view.left_top = sorted(before_top - {i for i, _ in now_top})
    if prof.interests:
        from model.interests import diverse_ranking

        exclude = np.fromiter((i in seen for i in runtime.item_ids), bool, len(runtime.item_ids))
        mixed = diverse_ranking(prof.vector, prof.interests, runtime.item_matrix, exclude, 3 * len(prof.interests))
        for n, shown in enumerate(view.interests):
            shown["recommended"] = [runtime.item_ids[i] for i, _, owner in mixed if owner == n][:3]
    if now_top:
        from model.explain import explain

        ex = explain(runtime, state.events, item=now_top[0][0])
        view.attribution = {"item_id": ex.target, "method": "occlusion",
                            "events": [{"event_id": a.event.event_id, "item_id": a.event.item_id,
                                        "platform": a.event.platform, "time": _iso(a.event.ts_ms),
                                        "score": round(a.score, 5)} for a in ex.ranked()[:TOP_K]]}
    return view
