"""``interest ui``: a live page of one person's interests, served beside the workers.

Why a command of its own and not a page on the worker's web port: the page
needs the model runtime and the item index to rank items and explain them,
reads any person (not only those of the partitions one worker owns), and
should keep working while workers roll; it reads through the same store
interface as the CLI, so it shows SQLite and Cassandra alike.

Endpoints: ``/`` the page (plain HTML and JavaScript, no build step),
``/api/person/{id}`` the view as JSON, ``/api/person/{id}/stream`` the same as
server-sent events, one whenever the person's stored state or vector changes
(checked every ``poll_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack, suppress
from importlib import resources
from typing import Annotated, Any

import typer

from interest.common import settings_or_exit
from interest.person_view import ModelCache, build_view, signature
from schemas.settings import Settings

log = logging.getLogger("interest.ui")


class PersonPages:
    """The store, the model cache and the HTTP handlers of one ``interest ui`` process."""

    def __init__(self, settings: Settings, poll_s: float = 1.0) -> None:
        self.settings = settings
        self.models = ModelCache(settings.registry, settings.model_version)
        self.poll_s = poll_s
        self.store: Any = None
        self._stack = AsyncExitStack()
        self._opening = asyncio.Lock()

    async def start(self) -> None:
        """Open the store now if it is there; a store the worker has not created yet is opened on first use."""
        from streams.stores.base import StoreError

        try:
            await self._open()
        except StoreError as exc:
            log.warning("store not open yet (%s); the page retries on every request", exc)

    async def _open(self) -> Any:
        from streams.stores.factory import opened_store

        async with self._opening:  # two requests at start-up must not open two stores
            if self.store is None:
                self.store = await self._stack.enter_async_context(opened_store(self.settings))
        return self.store

    async def close(self) -> None:
        await self._stack.aclose()

    async def _read(self, person: str) -> tuple[Any, Any]:
        store = await self._open()
        state = (await store.load_states([person])).get(person)
        wanted = self.models.wanted()
        prof = await store.get_profile(person, wanted) if wanted else None
        if prof is None:
            rows = await store.get_profiles(person)
            prof = rows[0] if rows else None
        return state, prof

    async def view(self, person: str) -> dict[str, Any]:
        state, prof = await self._read(person)
        return (await asyncio.to_thread(self._build, person, state, prof)).as_dict()

    def _build(self, person: str, state: Any, prof: Any) -> Any:
        """Off the event loop: loading a model version and encoding both block."""
        runtime = self.models.get(prof.model_version) if prof is not None else None
        return build_view(person, state, prof, runtime)

    async def page(self, request: Any) -> Any:
        from aiohttp import web

        html = resources.files("interest").joinpath("static/person.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html")

    async def person(self, request: Any) -> Any:
        from aiohttp import web

        from streams.stores.base import StoreError

        try:
            return web.json_response(await self.view(request.match_info["person"]))
        except StoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)

    async def stream(self, request: Any) -> Any:
        """Server-sent events: the view now, then again each time it changes."""
        from aiohttp import web

        person = request.match_info["person"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        last = None
        from streams.stores.base import StoreError

        try:
            while True:
                try:
                    state, prof = await self._read(person)
                except StoreError as exc:
                    await resp.write(f"event: problem\ndata: {json.dumps(str(exc))}\n\n".encode())
                    await asyncio.sleep(self.poll_s)
                    continue
                sig = signature(state, prof)
                if sig != last:
                    view = await asyncio.to_thread(self._build, person, state, prof)
                    await resp.write(f"data: {json.dumps(view.as_dict())}\n\n".encode())
                    last = sig
                else:
                    await resp.write(b": keep-alive\n\n")
                await asyncio.sleep(self.poll_s)
        except ConnectionResetError:  # the page went away
            pass
        return resp

    def app(self) -> Any:
        from aiohttp import web

        application = web.Application()
        application.router.add_get("/", self.page)
        application.router.add_get("/api/person/{person}", self.person)
        application.router.add_get("/api/person/{person}/stream", self.stream)
        return application


async def serve(settings: Settings, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Run the page until cancelled."""
    from aiohttp import web

    pages = PersonPages(settings)
    await pages.start()
    runner = web.AppRunner(pages.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pages.close()


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8090,
) -> None:
    """Serve the live page of a person's interests (timeline, recommendations, explanation)."""
    settings = settings_or_exit()
    typer.echo(f"live page on http://{host}:{port}/ (type a person id); Ctrl-C stops it", err=True)
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, host, port))


def register(app: typer.Typer) -> None:
    app.command()(ui)
