"""``interest demo``: the whole system on embedded defaults, nothing to install or run.

It starts the embedded broker, uses a SQLite store under the data folder,
trains a first model if the registry is empty (on synthetic traffic, well
under a minute on a laptop CPU), starts a worker process, produces live
multi-platform traffic, prints a live view once a second, and ends with a
few people's recommendations before and after their latest events.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from interest.embedded import EmbeddedBroker, free_port
from interest.produce import produce_events
from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.adapters import load_adapters
from schemas.settings import Settings


def say(text: str) -> None:
    print(text, flush=True)


def train_first_model(settings: Settings, users: int, items: int, seed: int) -> str:
    """Train and publish a small model on synthetic history (needs the ``train`` extra)."""
    from model.registry import Registry

    registry = Registry(settings.registry)
    promoted = registry.promoted() if Path(settings.registry).exists() else None
    if promoted:
        say(f"model: using promoted version {promoted} from {settings.registry}")
        return str(promoted)
    try:
        from model.trainer import TrainConfig, train
    except ImportError as exc:
        raise SystemExit("interest demo trains a first model: pip install -e '.[train,embedded]'") from exc
    say("model: registry empty, training a first model on synthetic history ...")
    traffic = SyntheticTraffic(load_adapters(), users=users, items=items, seed=seed + 1000)
    start = int(time.time() * 1000) - 30 * 86_400_000
    rows = [
        {"user_id": e.person_id, "item_id": _item(e), "timestamp": e.ts_ms, "platform": e.topic.split(".")[1],
         "action": e.topic.split(".")[2]}
        for e in traffic.events(users * 25, start, step_ms=60_000) if isinstance(e, RawEvent)
    ]
    cfg = TrainConfig(epochs=15, max_len=settings.seq_len, time_budget_s=90, progress=True)
    result = train(rows, settings.registry, cfg, time_unit="ms")
    say(f"model: published and promoted {result.version}")
    return str(result.version)


_ADAPTERS = load_adapters()


def _item(event: RawEvent) -> str:
    adapter = _ADAPTERS[event.topic.split(".")[1]]
    cur: Any = event.value
    for key in adapter.item_field:
        cur = cur[key]
    return str(cur)


def _get(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _recommend(settings: Settings, person: str, version: str, k: int = 5) -> tuple[list[str], list[str]]:
    """(top-k items, last 5 items) for a person, straight from the store and the item index."""
    from interest.query_cmd import top_items
    from model.registry import Registry
    from streams.stores.factory import opened_store

    async def read() -> tuple[Any, Any]:
        async with opened_store(settings) as store:
            return await store.get_profile(person, version), (await store.load_states([person])).get(person)

    row, state = asyncio.run(read())
    if row is None or state is None:
        return [], []
    items, vectors = Registry(settings.registry).item_index(version)
    top = top_items(row.vector, items, vectors, {e.item_id for e in state.events}, k)
    return [item for item, _ in top], [e.item_id for e in state.events[-5:]]


def run_demo(settings: Settings, seconds: float, rate: float, users: int, items: int, seed: int) -> None:
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_file=data / "broker.log") as broker:
        settings = settings.model_copy(update={"broker_url": broker.url})
        say(f"broker: embedded Tansu on {broker.url} (memory storage)")
        version = train_first_model(settings, users, items, seed)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
        env.update(settings.model_copy(update={"web_port": port}).to_env())
        log = open(data / "worker.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "interest.cli", "worker"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        ui_port = free_port()  # the live page; it opens the store once the worker has created it
        page = subprocess.Popen([sys.executable, "-m", "interest.cli", "ui", "--port", str(ui_port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _live(settings, worker, port, version, seconds, rate, users, items, seed, ui_port)
        finally:
            for proc in (page, worker):
                proc.terminate()
                proc.wait(timeout=60)
            log.close()


def _live(settings: Settings, worker: subprocess.Popen[bytes], port: int, version: str, seconds: float,
          rate: float, users: int, items: int, seed: int, ui_port: int) -> None:
    say(f"worker: starting (logs in {settings.data_dir}/worker.log, metrics on http://127.0.0.1:{port}/metrics)")
    deadline = time.monotonic() + 120
    while (_get(port, "/ready") or {}).get("ready") is not True:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not become ready; see {settings.data_dir}/worker.log")
        time.sleep(0.5)
    traffic = SyntheticTraffic(load_adapters(), users=users, items=items, seed=seed)
    total = int(seconds * rate)
    watch = [traffic.person(u) for u in (0, 1, 2)]
    before: dict[str, list[str]] = {}
    producer = threading.Thread(
        target=produce_events,
        args=(settings, traffic.events(total, int(time.time() * 1000), 1000.0 / rate)),
        kwargs={"rate": rate}, daemon=True,
    )
    producer.start()
    say(f"traffic: {total} events at {rate:.0f}/s from {users} people on {len(traffic.platforms)} platforms")
    say(f"live page: http://127.0.0.1:{ui_port}/?person={watch[0]} (a person's events, recommendations, why)")
    say(f"{'t':>4} {'events/s':>9} {'batch':>6} {'fresh p50':>10} {'fresh p99':>10} {'people':>7}  model")
    started = time.monotonic()
    last_events, last_t = 0, started
    while producer.is_alive() or time.monotonic() - started < seconds + 3:
        time.sleep(1.0)
        stats = _get(port, "/stats") or {}
        now = time.monotonic()
        events = stats.get("events_in", 0)
        eps = (events - last_events) / (now - last_t)
        last_events, last_t = events, now
        p50, p99 = stats.get("freshness_p50_ms"), stats.get("freshness_p99_ms")
        say(f"{now - started:4.0f} {eps:9.0f} {stats.get('last_batch', 0):6d} "
            f"{(f'{p50:.0f} ms' if p50 is not None else '-'):>10} {(f'{p99:.0f} ms' if p99 is not None else '-'):>10} "
            f"{stats.get('people_updated', 0):7d}  {stats.get('model_version')}")
        if not before and now - started > seconds / 3:
            before = {p: _recommend(settings, p, version)[0] for p in watch}
        if not producer.is_alive() and now - started > seconds + 3:
            break
    say("\nrecommendations before -> after each person's latest events:")
    for person in watch:
        after, recent = _recommend(settings, person, version)
        say(f"  {person}: latest items {recent}")
        say(f"    before: {before.get(person, [])}")
        say(f"    after:  {after}")
    say(f"\nquery it yourself: INTEREST_STORE_URL={settings.store_url} INTEREST_REGISTRY={settings.registry} "
        f"interest profile {watch[0]}")
