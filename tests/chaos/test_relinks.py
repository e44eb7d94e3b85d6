"""Relinks at the default window, live: several links per device, a late stale link, eviction everywhere.

The expected rows are computed here from the produced events alone, with the
link semantics the README states (a first link moves the device's kept
history, its last N events; the newest link by link time decides where the
device's later events go; an older link that arrives late changes nothing),
not with the worker's code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interest.produce import produce_events
from interest.synthetic import RawEvent
from schemas.settings import Settings
from testkit.chaos import report
from testkit.helpers import WorkerProcess, scan, wait_until

WINDOW = 50  # the default seq_len
DEVICES = [("web", "anon_id", "rl-d1"), ("app", "device_id", "rl-d2"), ("web", "anon_id", "rl-d3")]


def _anon(platform: str, field: str, device: str, n: int, ts: int) -> RawEvent:
    if platform == "web":
        value: dict[str, Any] = {"eid": f"{device}-{n}", field: device, "type": "click", "item_id": f"i{n % 40}",
                                 "ts": ts}
    else:
        value = {"event_id": f"{device}-{n}", field: device, "event": "tap", "sku": f"i{n % 40}", "time": ts / 1000}
    return RawEvent(f"events.{platform}.click", device, value, device, ts)


def _own(person: str, n: int, ts: int) -> RawEvent:
    return RawEvent("events.web.click", person, {"eid": f"{person}-own-{n}", "uid": person, "type": "click",
                                                  "item_id": f"o{n % 30}", "ts": ts}, person, ts)


def _link(platform: str, device: str, person: str, ts: int) -> tuple[str, dict[str, Any]]:
    return ("link", {"platform": platform, "device_id": device, "person_id": person, "ts_ms": ts})


def _window(ids_by_ts: list[tuple[int, str]]) -> list[str]:
    return [eid for _, eid in sorted(ids_by_ts)[-WINDOW:]]


def test_relinks_follow_the_newest_link_and_move_history_once(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    settings = chaos_settings(seq_len=WINDOW)
    t = int(time.time() * 1000) - 3_600_000
    expected: dict[str, list[tuple[int, str]]] = {}

    def at(step: int) -> int:
        return t + 1000 * step

    with WorkerProcess(settings, tmp_path, name="relinks"):
        step = 0
        phases: list[list[Any]] = [[], [], [], [], [], []]
        for d, (platform, field, device) in enumerate(DEVICES):
            first, second = f"rl-p{d}a", f"rl-p{d}b"
            own = [_own(first, n, at(step + n)) for n in range(20)] + [_own(second, n, at(step + n)) for n in range(20)]
            step += 20
            history = [_anon(platform, field, device, n, at(step + n)) for n in range(60)]  # > window: evicts
            step += 60
            phases[0] += own + history
            phases[1].append(_link(platform, device, first, at(step)))
            step += 1
            after_first = [_anon(platform, field, device, 100 + n, at(step + n)) for n in range(10)]
            step += 10
            phases[2] += after_first
            phases[3].append(_link(platform, device, second, at(step)))  # the relink, once those are stored
            step += 1
            after_second = [_anon(platform, field, device, 200 + n, at(step + n)) for n in range(10)]
            step += 10
            phases[4] += after_second + [_link(platform, device, first, at(step - 50))]  # older than the relink
            after_stale = [_anon(platform, field, device, 300 + n, at(step + n)) for n in range(5)]
            step += 5
            phases[5] += after_stale
            kept = sorted((e.ts_ms, e.value.get("eid") or e.value["event_id"]) for e in history)[-WINDOW:]
            expected[first] = [(e.ts_ms, e.value["eid"]) for e in own[:20]] + kept + [
                (e.ts_ms, e.value.get("eid") or e.value["event_id"]) for e in after_first]
            expected[second] = [(e.ts_ms, e.value["eid"]) for e in own[20:]] + [
                (e.ts_ms, e.value.get("eid") or e.value["event_id"]) for e in after_second + after_stale]
        for n, phase in enumerate(phases):
            produce_events(settings, phase)
            wait_until(lambda n=n: _phase_done(settings, version, n), 90, interval=0.5, what=f"phase {n} applied")
        want = {p: _window(ids) for p, ids in expected.items()}
        try:
            wait_until(lambda: _windows(settings, version) == want, 60, interval=0.5, what="every window as expected")
        except AssertionError:
            got = _windows(settings, version)
            diff = {p: (sorted(set(w) - set(got.get(p, []))), sorted(set(got.get(p, [])) - set(w)))
                    for p, w in want.items() if got.get(p) != w}
            raise AssertionError(f"missing, extra per person: {diff}") from None
    snap = scan(settings, version)
    assert not [p for p in snap["states"] if p.startswith("anon:")], "a linked device kept its own state"
    assert _links(settings) == {f"anon:{pf}:{dev}": f"rl-p{d}b" for d, (pf, _, dev) in enumerate(DEVICES)}
    report("relinks", devices=len(DEVICES), links_per_device=3, window=WINDOW,
           people={p: len(w) for p, w in want.items()})


def _links(settings: Settings) -> dict[str, str]:
    import asyncio

    from streams.stores.factory import opened_store

    async def read() -> dict[str, str]:
        async with opened_store(settings) as store:
            found = await store.load_links([f"anon:{pf}:{dev}" for pf, _, dev in DEVICES])
            return {anon: link.person_id for anon, link in found.items()}

    return asyncio.run(read())


def _windows(settings: Settings, version: str) -> dict[str, list[str]]:
    states = scan(settings, version)["states"]
    return {p: [e.event_id for e in s.events] for p, s in states.items() if not p.startswith("anon:")}


def _phase_done(settings: Settings, version: str, phase: int) -> bool:
    """Each phase ends with something visible: device states, then the moves, then the later events."""
    snap = scan(settings, version)
    anon = [p for p in snap["states"] if p.startswith("anon:")]
    if phase == 0:
        return len(anon) == len(DEVICES)
    if phase == 1:
        return not anon and all(f"rl-p{d}a" in snap["states"] for d in range(len(DEVICES)))
    if phase == 3:
        return _links(settings) == {f"anon:{pf}:{dev}": f"rl-p{d}b" for d, (pf, _, dev) in enumerate(DEVICES)}
    suffix = {2: "-109", 4: "-209", 5: "-304"}[phase]
    return all(any(e.event_id.endswith(suffix) and e.event_id.startswith(dev)
                   for s in snap["states"].values() for e in s.events) for _, _, dev in DEVICES)
