"""Re-encode every stored sequence with one model version (``interest reencode``).

Why: after a swap, people write rows for the new version only when they act
again.  Readers that want to use the new version's item index need every
person covered first; this job fills the gap in the background, page by
page in person-id order, while the workers keep running.

Safe beside the workers: each row is written with the state's data-derived
``write_ts``, so if a worker wrote a newer state for the same person and
version in the meantime, the store keeps the worker's row (last write wins
by data time, see ``streams.stores.base``).

Resumable: after each page the last person id is saved to
``<data_dir>/reencode/<version>.json``; an interrupted run continues after
it, a completed one starts over (new people may have arrived).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.interests import encode_with_interests
from schemas.sequence import Profile
from schemas.settings import Settings
from streams.stores.base import ProfileStore, StoreBatch


@dataclass
class ReencodeProgress:
    version: str
    total: int
    done: int
    written: int
    after: str | None
    resumed_after: str | None
    complete: bool
    seconds: float = 0.0
    store: str = ""


def cursor_path(settings: Settings, version: str) -> Path:
    return Path(settings.data_dir) / "reencode" / f"{version}.json"


def _load_cursor(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _save_cursor(path: Path, progress: ReencodeProgress) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(progress)), encoding="utf-8")
    os.replace(tmp, path)


async def coverage(store: ProfileStore, version: str) -> dict[str, Any]:
    """How many stored people have a row of ``version`` (readers switch at 100%)."""
    people, rows = await asyncio.gather(store.count_states(), store.count_profiles(version))
    return {"version": version, "people": people, "profiles": rows,
            "coverage": round(rows / people, 6) if people else 1.0}


async def reencode(
    settings: Settings,
    store: ProfileStore,
    runtime: Any,
    *,
    page: int = 512,
    max_people: int | None = None,
    restart: bool = False,
    on_progress: Callable[[ReencodeProgress], None] | None = None,
) -> ReencodeProgress:
    """Encode stored states with ``runtime`` and write its version's rows; returns the final progress.

    ``max_people`` stops early (the cursor is kept, a later run resumes).
    """
    version = str(runtime.version)
    path = cursor_path(settings, version)
    saved = None if restart else _load_cursor(path)
    store_key = hashlib.sha256(settings.store_url.encode()).hexdigest()[:16]
    if saved is not None and saved.get("store") != store_key:
        saved = None  # a cursor of another store (or another order) must not skip anyone here
    resume = saved is not None and not saved.get("complete")
    after = saved.get("after") if resume and saved else None
    progress = ReencodeProgress(
        version=version, total=await store.count_states(), done=int(saved.get("done", 0)) if resume and saved else 0,
        written=0, after=after, resumed_after=after, complete=False, store=store_key,
    )
    started = time.perf_counter()
    while max_people is None or progress.written < max_people:
        limit = page if max_people is None else min(page, max_people - progress.written)
        states = await store.iter_states(progress.after, limit)
        if not states:
            progress.complete = True
            break
        live = [s for s in states if s.events]
        vectors, interests = await asyncio.to_thread(
            encode_with_interests, runtime, [s.events for s in live], settings.interests_max, settings.seq_len)
        now = int(time.time() * 1000)
        batch = StoreBatch(profiles=[  # the same rows a worker writes, interests included
            Profile(s.person_id, version, vec, s.event_count, s.first_ts_ms, s.last_ts_ms, dict(s.platforms),
                    s.write_ts, now, kept)
            for s, vec, kept in zip(live, vectors, interests, strict=True)
        ])
        if len(batch):
            await store.write_batch(batch)
        progress.after = states[-1].person_id
        progress.done += len(states)
        progress.written += len(states)
        progress.seconds = time.perf_counter() - started
        _save_cursor(path, progress)
        if on_progress is not None:
            on_progress(progress)
    progress.seconds = time.perf_counter() - started
    _save_cursor(path, progress)
    return progress
