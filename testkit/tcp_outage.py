"""A plain TCP forwarder in front of a broker that can make the broker vanish for a while.

Why it exists: restarting the embedded Tansu broker is not what a Kafka
broker restart is.  Tansu keeps its log in memory, so a restart starts every
partition again at offset 0 while the consumer group may still hold offsets
of the old log, and Tansu answers a fetch past the log end with an empty
batch instead of Kafka's OFFSET_OUT_OF_RANGE, so the consumer waits there
for good.  A real broker restart keeps the log and the committed offsets; what
clients see is every connection dropped, connections refused for a while, and
(when that lasts longer than the session timeout) their group membership
gone.  This forwarder plays exactly that in front of a Tansu that keeps
running: ``outage(seconds)`` aborts every open connection and stops
listening, then listens again on the same port.

Tansu must advertise the forwarder's address (``--advertised-listener-url``)
so Metadata and FindCoordinator answers send clients back through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class OutageProxy:
    """Forwards ``host:port`` to ``upstream`` until told to go dark."""

    def __init__(self, port: int, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.outages = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="outage-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def start(self) -> OutageProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._go_dark())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def outage(self, seconds: float) -> None:
        """Drop every connection, refuse new ones for ``seconds``, then accept again (blocks meanwhile)."""
        self._call(self._go_dark())
        self.outages += 1
        with contextlib.suppress(Exception):
            self._call(asyncio.sleep(seconds), timeout=seconds + 5)
        self._call(self._listen())

    def _call(self, coro: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)

    async def _go_dark(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open.update((writer, up_writer))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._open.difference_update((writer, up_writer))

    def __enter__(self) -> OutageProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
