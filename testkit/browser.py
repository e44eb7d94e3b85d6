"""A real headless Chromium driven over its DevTools protocol: open a page, read it, take a screenshot.

Why the DevTools protocol and not ``--dump-dom``: the live page changes after
it loaded (server-sent events); a test has to keep one page open, make
something happen, and watch the page change.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from interest.embedded import free_port

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """``async with Browser(url) as page: await page.text("timeline")``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # Chromium's helpers (zygote, renderers) may still write the profile after the browser exits.
        self._profile = tempfile.TemporaryDirectory(prefix="interest-chromium-", ignore_cleanup_errors=True)
        self._ids = itertools.count(1)
        self._session: Any = None
        self._ws: Any = None

    async def __aenter__(self) -> Browser:
        import aiohttp

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--remote-debugging-port={self.port}",
                                      f"--user-data-dir={self._profile.name}", self.url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # its own group: the helpers go with it
        try:
            target = await asyncio.to_thread(self._page_target, 30.0)
            self._session = aiohttp.ClientSession()
            self._ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        except BaseException:
            await self.__aexit__(None, None, None)  # its own session: nothing else would take it down
            raise
        return self

    def _page_target(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=1) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
                if pages:
                    return dict(pages[0])
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("chromium did not open its DevTools port")

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self._signal_group(signal.SIGKILL)  # whatever helper is left
            self.proc.wait(timeout=10)
        self._profile.cleanup()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads((await self._ws.receive(timeout=30)).data)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def text(self, element_id: str) -> str:
        value = await self.evaluate(f"(document.getElementById({json.dumps(element_id)}) || {{}}).innerText || ''")
        return str(value or "")

    async def wait_for_text(self, element_id: str, needle: str, timeout: float) -> float:
        """Seconds until ``needle`` shows inside the element; ``TimeoutError`` naming what it saw."""
        started = time.monotonic()
        seen = ""
        while time.monotonic() - started < timeout:
            seen = await self.text(element_id)
            if needle in seen:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{needle!r} not in #{element_id} after {timeout:.0f} s; it showed: {seen[:300]!r}")

    async def screenshot(self, path: Path) -> Path:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        return path
