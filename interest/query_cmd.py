"""Query and operations commands: profile, recommend, similar, forget, dlq replay."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import typer

from interest.common import settings_or_exit
from schemas.settings import Settings


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def _with_store(settings: Settings, fn: Any) -> Any:
    from streams.stores.factory import opened_store

    async with opened_store(settings) as store:
        return await fn(store)


def _version(settings: Settings, version: str | None, platform: str | None = None) -> str:
    """The version to read: ``--version``, else (with ``--platform``) the platform's promoted one, else the
    pinned or promoted shared one.  A platform's rows and item index live under its own version."""
    if version:
        return version
    from model.registry import ModelRejected, Registry

    if platform is None and settings.model_version:
        return settings.model_version
    try:
        promoted = Registry(settings.registry).promoted(platform)
    except ModelRejected as exc:
        typer.echo(f"error: {exc.reason}", err=True)
        raise typer.Exit(2) from exc
    if promoted is None:
        where = "" if platform is None else f" for platform {platform}"
        typer.echo(f"error: no promoted model{where} in {settings.registry}; pass --version", err=True)
        raise typer.Exit(2)
    return str(promoted)


PlatformOpt = Annotated[str | None, typer.Option(
    "--platform", help="Use the platform's fine-tuned version (vector and item index); default: the shared one")]


def profile_dict(p: Any) -> dict[str, Any]:
    return {
        "person_id": p.person_id, "model_version": p.model_version, "dim": int(p.vector.shape[0]),
        "event_count": p.event_count, "first_event": _iso(p.first_ts_ms), "last_event": _iso(p.last_ts_ms),
        "platforms": {k: _iso(v) for k, v in sorted(p.platforms.items())},
        "updated": _iso(p.updated_ms), "write_ts": p.write_ts,
        "vector": [round(float(x), 6) for x in p.vector],
        "interests": [{"weight": round(i.weight, 4), "items": list(i.items),
                       "vector": [round(float(x), 6) for x in i.vector]} for i in p.interests],
    }


def top_items(vector: np.ndarray, items: list[str], vectors: np.ndarray, seen: set[str],
              k: int) -> list[tuple[str, float]]:
    """Top-k items by dot product (item vectors carry a bias term: not cosine), history excluded."""
    scores = np.asarray(vectors, dtype=np.float32) @ vector.astype(np.float32)
    return [(items[i], float(scores[i])) for i in np.argsort(-scores) if items[i] not in seen][:k]


def diverse_items(row: Any, items: list[str], vectors: np.ndarray, seen: set[str],
                  k: int) -> list[tuple[str, float, int]]:
    """``k`` items ranked by the person's vector, slots shared among the interests by weight."""
    from model.interests import diverse_ranking

    exclude = np.fromiter((i in seen for i in items), bool, len(items))
    return [(items[i], s, n) for i, s, n in diverse_ranking(row.vector, row.interests, vectors, exclude, k)]


def profile(
    person: str,
    version: Annotated[str | None, typer.Option(help="Model version (default: promoted)")] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Every version's row")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    platform: PlatformOpt = None,
) -> None:
    """Show a person's interest profile."""
    settings = settings_or_exit()

    async def run(store: Any) -> list[Any]:  # the store first: without one, that is the mistake to report
        if all_versions:
            return list(await store.get_profiles(person))
        row = await store.get_profile(person, _version(settings, version, platform))
        return [row] if row else []

    rows = asyncio.run(_with_store(settings, run))
    if not rows:
        typer.echo(f"no profile for {person!r}", err=True)
        raise typer.Exit(1)
    for row in rows:
        data = profile_dict(row)
        if as_json:
            typer.echo(json.dumps(data))
            continue
        age = time.time() - row.updated_ms / 1000
        typer.echo(f"person {row.person_id}  model {row.model_version}  events {row.event_count}  "
                   f"updated {data['updated']} ({age:.1f}s ago)")
        typer.echo(f"  events {data['first_event']} .. {data['last_event']}  platforms "
                   + ", ".join(f"{k}@{v}" for k, v in data["platforms"].items()))
        typer.echo("  vector[:8] " + " ".join(f"{x:+.3f}" for x in row.vector[:8]) + f" ... (dim {data['dim']})")
        for n, interest in enumerate(row.interests, 1):
            typer.echo(f"  interest {n}  weight {interest.weight:.2f}  items " + ", ".join(interest.items))


def recommend(
    person: str,
    k: Annotated[int, typer.Option("-k", help="How many items")] = 10,
    version: Annotated[str | None, typer.Option(help="Model version (default: promoted)")] = None,
    diverse: Annotated[bool, typer.Option("--diverse", help="Mix items from each of the person's interests")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    platform: PlatformOpt = None,
) -> None:
    """Top-k items for a person from the model's item index, history excluded.

    ``--diverse`` ranks by the same vector but gives each of the person's
    interests slots in proportion to its weight (an item belongs to the
    interest whose vector scores it highest).
    """
    from model.registry import Registry

    settings = settings_or_exit()
    ver = _version(settings, version, platform)

    async def run(store: Any) -> tuple[Any, Any]:
        row = await store.get_profile(person, ver)
        states = await store.load_states([person])
        return row, states.get(person)

    row, state = asyncio.run(_with_store(settings, run))
    if row is None:
        typer.echo(f"no profile for {person!r} in version {ver}", err=True)
        raise typer.Exit(1)
    items, vectors = Registry(settings.registry).item_index(ver)
    seen = {e.item_id for e in state.events} if state else set()
    if diverse and not row.interests:
        typer.echo(f"note: {person!r} has no interests stored (yet); ranking by the single vector", err=True)
    mixed = diverse_items(row, items, vectors, seen, k) if diverse else [
        (i, s, None) for i, s in top_items(row.vector, items, vectors, seen, k)]
    if as_json:
        typer.echo(json.dumps({"person_id": person, "model_version": ver, "diverse": diverse,
                               **({} if platform is None else {"platform": platform}),
                               "items": [{"item_id": i, "score": s} | ({} if n is None else {"interest": n + 1})
                                         for i, s, n in mixed]}))
        return
    for rank, (item, score, n) in enumerate(mixed, 1):
        typer.echo(f"{rank:>3}. {item}  {score:.4f}" + ("" if n is None else f"  (interest {n + 1})"))


def similar(
    person: str,
    k: Annotated[int, typer.Option("-k", help="How many people")] = 10,
    version: Annotated[str | None, typer.Option(help="Model version (default: promoted)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    platform: PlatformOpt = None,
) -> None:
    """Nearest people to a person in one model's embedding space."""
    settings = settings_or_exit()
    ver = _version(settings, version, platform)

    async def run(store: Any) -> Any:
        row = await store.get_profile(person, ver)
        if row is None:
            return None
        return await store.nearest_people(row.vector, ver, k, exclude=[person])

    found = asyncio.run(_with_store(settings, run))
    if found is None:
        typer.echo(f"no profile for {person!r} in version {ver}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps({"person_id": person, "model_version": ver,
                               "people": [{"person_id": p, "score": s} for p, s in found]}))
        return
    for rank, (other, score) in enumerate(found, 1):
        typer.echo(f"{rank:>3}. {other}  {score:.4f}")


def explain(
    person: str,
    item: Annotated[str | None, typer.Option(help="Item to explain (default: the top recommendation)")] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default: promoted)")] = None,
    top: Annotated[int, typer.Option("-n", help="Events to show")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    platform: PlatformOpt = None,
) -> None:
    """Which of a person's events drive a recommendation (leave-one-out occlusion through the encoder)."""
    from model.explain import explain as explain_events
    from model.runtime import EncoderRuntime

    settings = settings_or_exit()
    ver = _version(settings, version, platform)
    runtime = EncoderRuntime.load(settings.registry, ver, settings.use_gpu)

    async def run(store: Any) -> Any:
        return (await store.load_states([person])).get(person)

    state = asyncio.run(_with_store(settings, run))
    if state is None or not state.events:
        typer.echo(f"no events stored for {person!r}", err=True)
        raise typer.Exit(1)
    if item is None:
        vector = runtime.encode([state.events])[0]
        seen = {e.item_id for e in state.events}
        best = top_items(vector, runtime.item_ids, runtime.item_matrix, seen, 1)
        item = best[0][0] if best else None
    started = time.perf_counter()
    result = explain_events(runtime, state.events, item=item)
    took_ms = (time.perf_counter() - started) * 1000
    ranked = result.ranked()[:top]
    if as_json:
        typer.echo(json.dumps({"person_id": person, "model_version": ver, "target": result.target,
                               "method": "occlusion", "base_score": result.base_score, "ms": round(took_ms, 2),
                               "events": [{"event_id": a.event.event_id, "time": _iso(a.event.ts_ms),
                                           "platform": a.event.platform, "action": a.event.action,
                                           "item_id": a.event.item_id, "score": a.score} for a in ranked]}))
        return
    typer.echo(f"why {result.target} for {person} (score {result.base_score:.4f}, model {ver}, "
               f"{len(result.events)} events, {took_ms:.0f} ms): what leaving each event out costs")
    peak = max((abs(a.score) for a in ranked), default=0.0) or 1.0
    for a in ranked:
        bar = "#" * max(1, round(20 * abs(a.score) / peak))
        typer.echo(f"  {a.score:+.4f} {bar:<20} {_iso(a.event.ts_ms)} {a.event.platform:<5} {a.event.action:<8} "
                   f"{a.event.item_id}")


def register(app: typer.Typer) -> None:
    for command in (profile, recommend, similar, explain):
        app.command()(command)
