"""The live page in a real headless Chromium: a person's new event shows on the open page within seconds.

Everything is real: the embedded broker, a worker process, the SQLite store,
``interest ui`` as its own process, and Chromium driven over its DevTools
protocol.  The page stays open while the event is produced; the test watches
the page change (server-sent events), as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from interest.embedded import free_port
from interest.produce import produce_events
from interest.synthetic import RawEvent
from schemas.settings import Settings
from testkit.browser import Browser, chromium_path
from testkit.helpers import WorkerProcess, settings_env, wait_until

SCREENSHOT = os.environ.get("INTEREST_TEST_SCREENSHOT")  # a path: keep the page's picture (the README's)


def _web_event(person: str, item: str, ts_ms: int, action: str = "click") -> RawEvent:
    value = {"eid": f"live-{uuid.uuid4().hex[:12]}", "uid": person, "type": action, "item_id": item, "ts": ts_ms,
             "page": "/home"}
    return RawEvent(f"events.web.{action}", person, value, person, ts_ms)


def _topic(settings: Settings, event: RawEvent) -> RawEvent:
    """The same event on the test's own topic names (``<tid>.events.web.click``)."""
    topic = next(t for t in settings.raw_topics() if t.endswith(event.topic))
    return RawEvent(topic, event.key, event.value, event.person_id, event.ts_ms)


def _page_server(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}, **settings_env(settings)}
    return subprocess.Popen([sys.executable, "-m", "interest.cli", "ui", "--port", str(port)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.mark.skipif(chromium_path() is None and os.environ.get("CI") != "true", reason="chromium not installed")
def test_a_new_event_shows_on_the_open_page_within_seconds(
    make_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, _ = model_registry
    settings = make_settings(registry=registry)
    person = f"u-live-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    history = [_topic(settings, _web_event(person, f"i{n}", now - 60_000 * (10 - n))) for n in range(8)]
    fresh_item = f"live-item-{uuid.uuid4().hex[:6]}"
    port = free_port()
    with WorkerProcess(settings, tmp_path, name="live") as worker:
        produce_events(settings, history)
        wait_until(lambda: worker.get("/stats")[1]["people_updated"] >= 1, 60, what="the person's first vector")
        server = _page_server(settings, port, tmp_path / "ui.log")
        try:
            wait_until(lambda: _answers(port), 30, what="interest ui listening")

            async def drive() -> float:
                async with Browser(f"http://127.0.0.1:{port}/?person={person}") as page:
                    await page.wait_for_text("timeline", "i7", timeout=20)  # the stored history is shown
                    assert "1." in await page.text("recs"), "recommendations are listed"
                    produce_events(settings, [_topic(settings, _web_event(person, fresh_item, int(time.time() * 1000),
                                                                          "purchase"))])
                    seconds = await page.wait_for_text("timeline", fresh_item, timeout=20)
                    assert (await page.text("k-count")) == "9"
                    why = await page.text("attribution")
                    assert why.strip() not in ("", "–") and "web" in why, "each event's attribution is shown"
                    shown = await page.text("interests")
                    assert "%" in shown and "→" in shown, "the interests with their weights and their items"
                    if SCREENSHOT:
                        await page.screenshot(Path(SCREENSHOT))
                    return seconds

            seconds = asyncio.run(drive())
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"[live page] new event visible on the open page after {seconds:.2f} s")
    assert seconds < 10


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
