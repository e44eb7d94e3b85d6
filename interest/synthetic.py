"""Synthetic multi-platform behaviour: people with a few latent interests.

Why synthetic traffic has structure: the demo and the benchmarks should show
a model learning something, so each person prefers two or three item
clusters, acts on several platforms, and sometimes starts anonymous on a
device that an identity link later ties to the person.  Activity is
Zipf-skewed over people and items, like real traffic.

Raw events are written in each platform's own format by inverting its
declarative adapter, so every shipped (or configured) platform gets traffic.

Platforms that differ (off by default, so every existing seed gives the same
traffic as before): ``platform_tastes`` is the probability that a person's
preferred clusters on a platform are drawn anew for that platform (they watch
on TV what they would never buy on the web); ``platform_catalogue`` is the
share of a platform's events whose item comes from that platform's own
catalogue (``<platform>-i<n>``, same cluster structure) instead of the
shared items (``i<n>``).  The extra draws use a random stream of their own.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from schemas.adapters import PlatformAdapter

ACTION_MIX = (("browse", 0.6), ("click", 0.3), ("purchase", 0.1))


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One message to produce: topic, key and the platform-format JSON."""

    topic: str
    key: str
    value: dict[str, Any]
    person_id: str  # ground truth, for oracles and tests
    ts_ms: int


def _set(obj: dict[str, Any], path: tuple[str, ...] | None, value: Any) -> None:
    if path is None:
        return
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = value


def to_raw(
    adapter: PlatformAdapter,
    *,
    event_id: str | None,
    person: str | None,
    device: str | None,
    action: str,
    item: str,
    ts_ms: int,
) -> dict[str, Any]:
    """Write a canonical event in ``adapter``'s raw format (inverse mapping)."""
    raw: dict[str, Any] = {}
    raw_action = next(k for k, v in adapter.actions.items() if v == action)
    _set(raw, adapter.action_field, raw_action)
    _set(raw, adapter.item_field, item)
    if adapter.time_unit == "iso8601":
        ts: Any = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    elif adapter.time_unit == "s":
        ts = ts_ms / 1000
    elif adapter.time_unit == "us":
        ts = ts_ms * 1000
    else:
        ts = ts_ms
    _set(raw, adapter.time_field, ts)
    if person is not None:
        _set(raw, adapter.person_field, person)
    if device is not None:
        _set(raw, adapter.device_field, device)
    if event_id is not None:
        _set(raw, adapter.event_id_field, event_id)
    return raw


class SyntheticTraffic:
    """Deterministic generator of raw events and identity links for a seed."""

    def __init__(
        self,
        adapters: dict[str, PlatformAdapter],
        users: int = 1000,
        items: int = 2000,
        clusters: int = 20,
        anonymous_share: float = 0.2,
        seed: int = 0,
        platform_tastes: float = 0.0,
        platform_catalogue: float = 0.0,
    ) -> None:
        if not (0.0 <= platform_tastes <= 1.0 and 0.0 <= platform_catalogue <= 1.0):
            raise ValueError("platform_tastes and platform_catalogue are probabilities in [0, 1]")
        self.adapters = adapters
        self.platforms = sorted(adapters)
        self.users = users
        self.items = items
        self.clusters = clusters
        self.anonymous_share = anonymous_share
        self.rng = random.Random(seed)
        self.seed = seed  # in every event id: two generators never share one (an id is one event)
        nprng = np.random.default_rng(seed)
        zipf = 1.0 / np.arange(1, users + 1) ** 0.8
        self.user_weights = (zipf / zipf.sum()).cumsum()
        self._user_cdf: list[float] = self.user_weights.tolist()  # bisect on a list: no numpy call per event
        self.item_cluster = nprng.integers(0, clusters, size=items)
        self.cluster_items = [np.flatnonzero(self.item_cluster == c) for c in range(clusters)]
        self.prefs = [self.rng.sample(range(clusters), k=self.rng.randint(1, 3)) for _ in range(users)]
        self.user_platforms = [self.rng.sample(self.platforms, k=self.rng.randint(1, min(3, len(self.platforms))))
                               for _ in range(users)]
        # Anonymous devices: (user, platform) pairs that start logged out.
        self.anon_left: dict[tuple[int, str], int] = {}
        for u in range(users):
            for p in self.user_platforms[u]:
                if self.rng.random() < anonymous_share:
                    self.anon_left[(u, p)] = self.rng.randint(1, 6)
        self._seq = 0
        # Platform differences, from their own stream so the draws above stay as they were.
        self.platform_tastes, self.platform_catalogue = platform_tastes, platform_catalogue
        self.prng = random.Random(f"platforms-{seed}")
        self.platform_prefs: dict[tuple[int, str], list[int]] = {}
        if platform_tastes > 0:
            for u in range(users):
                for p in self.user_platforms[u]:
                    if self.prng.random() < platform_tastes:
                        self.platform_prefs[(u, p)] = self.prng.sample(range(clusters), k=self.prng.randint(1, 3))

    def person(self, u: int) -> str:
        return f"u{u}"

    def device(self, u: int, platform: str) -> str:
        return f"d{u}-{platform}"

    def _pick_user(self) -> int:
        return bisect.bisect_left(self._user_cdf, self.rng.random() * self._user_cdf[-1])

    def _pick_item(self, u: int, platform: str | None = None) -> str:
        prefs = self.platform_prefs.get((u, platform or ""), self.prefs[u])
        cluster = self.rng.choice(prefs) if self.rng.random() < 0.85 else self.rng.randrange(self.clusters)
        own = self.platform_catalogue > 0 and self.prng.random() < self.platform_catalogue
        prefix = f"{platform}-" if own and platform else ""
        members = self.cluster_items[cluster]
        if len(members) == 0:
            return f"{prefix}i{self.rng.randrange(self.items)}"
        rank = min(int(self.rng.paretovariate(1.2)) - 1, len(members) - 1)
        return f"{prefix}i{int(members[rank])}"

    def _pick_action(self) -> str:
        r = self.rng.random()
        acc = 0.0
        for action, share in ACTION_MIX:
            acc += share
            if r < acc:
                return action
        return "browse"

    def events(self, n: int, start_ms: int, step_ms: float = 5.0) -> Iterator[RawEvent | tuple[str, dict[str, Any]]]:
        """Yield ``n`` raw events; identity links are yielded as ``("link", value)``.

        Event times start at ``start_ms`` and advance by ``step_ms`` on average.
        """
        ts = float(start_ms)
        for _ in range(n):
            ts += self.rng.expovariate(1.0 / step_ms) if step_ms > 0 else 0.0
            u = self._pick_user()
            platform = self.rng.choice(self.user_platforms[u])
            adapter = self.adapters[platform]
            action = self._pick_action()
            item = self._pick_item(u, platform)
            self._seq += 1
            event_id = f"{platform}-{self.seed}-{self._seq}"
            anon = self.anon_left.get((u, platform), 0)
            ts_ms = int(ts)
            if anon > 0:
                device = self.device(u, platform)
                self.anon_left[(u, platform)] = anon - 1
                raw = to_raw(adapter, event_id=event_id, person=None, device=device, action=action, item=item,
                             ts_ms=ts_ms)
                yield RawEvent(f"events.{platform}.{action}", device, raw, self.person(u), ts_ms)
                if anon == 1:  # the person logs in: link the device
                    yield ("link", {"platform": platform, "device_id": device, "person_id": self.person(u),
                                    "ts_ms": ts_ms})
            else:
                person = self.person(u)
                raw = to_raw(adapter, event_id=event_id, person=person, device=self.device(u, platform),
                             action=action, item=item, ts_ms=ts_ms)
                yield RawEvent(f"events.{platform}.{action}", person, raw, person, ts_ms)


def canonical_rows(events: Iterable[RawEvent | tuple[str, dict[str, Any]]],
                   adapters: dict[str, PlatformAdapter]) -> list[dict[str, Any]]:
    """Canonical training rows (ground-truth person, platform, action, item, time) of generated events.

    For offline training and benchmarks that measure the model, not the pipeline: identity links
    are skipped because every raw event already carries its true person.
    """
    rows: list[dict[str, Any]] = []
    for e in events:
        if not isinstance(e, RawEvent):
            continue
        _, platform, action = e.topic.rsplit(".", 2)
        item: Any = e.value
        for key in adapters[platform].item_field:
            item = item[key]
        rows.append({"user_id": e.person_id, "item_id": str(item), "ts_ms": e.ts_ms, "platform": platform,
                     "action": action})
    return rows
