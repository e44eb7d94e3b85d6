"""The periodic trainer behind ``interest trainer --once | --every 6h``.

One round: read recent sequences from the profile store (the same
sequences the workers encode, so training sees what serving sees), warm-start
from the promoted version, fine-tune, evaluate the candidate *and* the
promoted version on the same held-out slice, publish only if the quality gate
passes (``Registry.publish``), and announce the new version on
``interest.models`` so running workers hot-swap to it.

A round that is refused by the gate or finds too little data is a normal
outcome, reported as data (``published: false`` and the reason), not an
error: the CronJob should not page anyone because the model did not improve.

With ``INTEREST_PLATFORMS_SERVED`` the round then refreshes each platform:
the promoted shared version (the one just published, or the one that stayed)
is fine-tuned on that platform's targets from the same rows, gated against
the platform's promoted version and announced; each platform reports its own
outcome under ``platforms`` and one refusal never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from schemas.settings import Settings

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``6h``, ``1d`` -> seconds (clear error otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 6h, 1d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


@dataclass
class RoundOptions:
    window_days: float = 30.0
    min_people: int = 20
    max_people: int | None = None
    epochs: int = 20
    time_budget_s: float = 540.0
    seed: int = 0
    force: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


async def _read_events(settings: Settings, window_days: float, max_people: int | None) -> tuple[list[dict[str, Any]],
                                                                                                  int]:
    """Canonical event rows of stored sequences inside the window (and how many people have any)."""
    from streams.stores.base import state_pages
    from streams.stores.factory import opened_store

    cutoff = int(time.time() * 1000 - window_days * 86_400_000)
    rows: list[dict[str, Any]] = []
    people = 0
    async with opened_store(settings) as store:
        async for page in state_pages(store):
            for state in page:
                recent = [e for e in state.events if e.ts_ms >= cutoff]
                if not recent:
                    continue
                people += 1
                rows.extend({"user_id": state.person_id, "item_id": e.item_id, "ts_ms": e.ts_ms,
                             "action": e.action, "platform": e.platform, "weight": e.weight} for e in recent)
            if max_people is not None and people >= max_people:
                break
    return rows, people


def refusal(exc: Exception) -> str:
    """What refused a candidate, for a round's ``reason``: the export's parity check or the quality gate."""
    from model.export import ExportError

    return "export check" if isinstance(exc, ExportError) else "quality gate"


def run_round(settings: Settings, options: RoundOptions, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One training round; returns a JSON-able summary (``published`` says what happened)."""
    from model.registry import ModelRejected, Registry
    from model.trainer import TrainConfig, train

    started = time.perf_counter()
    if rows is None:
        rows, people = asyncio.run(_read_events(settings, options.window_days, options.max_people))
    else:
        people = len({r["user_id"] for r in rows})
    summary: dict[str, Any] = {"events": len(rows), "people": people, "window_days": options.window_days}
    if people < options.min_people:
        return {**summary, "published": False,
                "reason": f"not enough data: {people} people with events in the window (< {options.min_people})"}
    registry = Registry(settings.registry)
    parent = registry.promoted()
    warm = parent if parent is not None and (registry.path(parent) / "weights.npz").is_file() else None
    cfg = TrainConfig(epochs=options.epochs, time_budget_s=options.time_budget_s, seed=options.seed,
                      progress=True, **options.extra)
    try:
        result = train(rows, settings.registry, cfg, from_version=warm, time_unit="ms", force=options.force,
                       gate_tolerance=settings.quality_gate_tolerance,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ModelRejected as exc:
        return {**summary, "published": False, "parent": parent, "reason": f"{refusal(exc)}: {exc.reason}",
                "seconds": round(time.perf_counter() - started, 2)}
    summary.update(published=True, version=result.version, parent=parent, warm_start=warm is not None,
                   metrics=result.metrics, seconds=round(time.perf_counter() - started, 2))
    _announce(settings, result.version, {"parent": parent}, summary)
    return summary


def _announce(settings: Settings, version: str, extra: dict[str, Any], summary: dict[str, Any]) -> None:
    from streams.model_watch import announce

    try:
        announce(settings, version, "publish", extra)
        summary["announced"] = True
    except Exception as exc:  # the registry is the truth; workers also re-check it periodically
        log.warning("could not announce %s on %s: %s", version, settings.models_topic, exc)
        summary["announced"] = False
        summary["announce_error"] = str(exc)


def run_platform_round(settings: Settings, options: RoundOptions, rows: list[dict[str, Any]],
                       platform: str) -> dict[str, Any]:
    """Fine-tune the promoted shared version on ``platform``'s targets in ``rows``; gate, publish, announce."""
    from model.registry import ModelRejected, Registry
    from model.trainer import TrainConfig, train

    started = time.perf_counter()
    registry = Registry(settings.registry)
    parent = registry.promoted()
    people = len({r["user_id"] for r in rows if r["platform"] == platform})
    summary: dict[str, Any] = {"people": people, "parent": parent, "previous": registry.promoted(platform)}
    if parent is None or not (registry.path(parent) / "weights.npz").is_file():
        return {**summary, "published": False, "reason": "no promoted shared version with weights to fine-tune"}
    if people < options.min_people:
        return {**summary, "published": False,
                "reason": f"not enough data: {people} people with {platform} events in the window "
                          f"(< {options.min_people})"}
    cfg = TrainConfig(epochs=options.epochs, time_budget_s=options.time_budget_s, seed=options.seed,
                      progress=True, **options.extra)
    try:
        result = train(rows, settings.registry, cfg, from_version=parent, platform=platform, time_unit="ms",
                       force=options.force, gate_tolerance=settings.quality_gate_tolerance,
                       log=lambda msg: print(f"[{platform}] {msg}", file=sys.stderr, flush=True))
    except ModelRejected as exc:
        return {**summary, "published": False, "reason": f"{refusal(exc)}: {exc.reason}",
                "seconds": round(time.perf_counter() - started, 2)}
    except ValueError as exc:  # e.g. nobody with 3+ events on the platform: nothing to gate on
        return {**summary, "published": False, "reason": f"not enough data: {exc}"}
    summary.update(published=True, version=result.version, metrics=result.metrics,
                   seconds=round(time.perf_counter() - started, 2))
    _announce(settings, result.version, {"parent": parent, "platform": platform}, summary)
    return summary


def run_rounds(settings: Settings, options: RoundOptions) -> dict[str, Any]:
    """The shared round, then (``platforms_served``) every platform's, from the same rows."""
    if not settings.platforms_served:
        return run_round(settings, options)
    rows, _ = asyncio.run(_read_events(settings, options.window_days, options.max_people))
    summary = run_round(settings, options, rows)
    summary["platforms"] = {p: run_platform_round(settings, options, rows, p) for p in settings.platforms_served}
    return summary
