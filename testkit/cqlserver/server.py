"""The in-process CQL server: sockets, handshake, authentication, faults and statistics.

Why threads: the server runs its own asyncio loop in a daemon thread, so a
test (sync or async) can drive the real cassandra-driver against it and flip
faults from the test thread while requests are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from .executor import Database, Prepared, SetKeyspace, Target, Void
from .faults import Faults, Stats, fault_error
from .framing import (
    SUPPORTED_VERSIONS,
    CqlError,
    ErrorCode,
    Frame,
    Opcode,
    ProtocolViolation,
    QueryParams,
    Reader,
    Writer,
    encode_frame,
    invalid,
    read_frame,
    read_query_params,
    unprepared,
)
from .parser import parse
from .results import encode_prepared, encode_result
from .statements import Delete, Insert, Statement, Update
from .system import NodeInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
_AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"


@dataclass(eq=False)
class _Conn:
    node: NodeInfo
    writer: asyncio.StreamWriter
    authenticated: bool = False
    keyspace: str | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class CqlServer:
    """A fake Cassandra cluster of ``nodes`` nodes on 127.0.0.1 (one port each) sharing one database."""

    def __init__(
        self,
        nodes: int = 1,
        *,
        users: dict[str, str] | None = None,
        release_version: str = "5.0.2",
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.db = Database.create(nodes, release_version)
        self.users = dict(users) if users else None
        self.ssl_context = ssl_context
        self.host = host
        self._first_port = port
        self.faults = Faults(self)
        self.stats = Stats()
        self._conns: set[_Conn] = set()
        self._servers: list[asyncio.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._parsed: dict[str, tuple[Statement, int]] = {}

    @property
    def nodes(self) -> list[NodeInfo]:
        return self.db.cluster.nodes

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def url(self, keyspace: str, **options: Any) -> str:
        """A ``cassandra://`` store URL pointing at this server's first node."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"cassandra://{self.host}:{self.port}/{keyspace}" + (f"?{query}" if query else "")

    def advance_clock(self, seconds: float) -> None:
        """Move the server's clock forward (TTL expiry without sleeping)."""
        self.db.clock_offset += seconds

    # -- lifecycle -------------------------------------------------------
    def start(self) -> CqlServer:
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.listen())
            except BaseException as exc:  # surfaced to the caller of start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="cqlserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def listen(self) -> None:
        for node in self.nodes:
            port = self._first_port if node.index == 0 else 0
            server = await asyncio.start_server(
                partial(self._serve, node), node.host, port, ssl=self.ssl_context
            )
            node.port = server.sockets[0].getsockname()[1]
            self._servers.append(server)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        self.drop_connections(set(range(len(self.nodes))))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a function or coroutine function) on the server loop and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            out = fn(*args)
            return await out if asyncio.iscoroutine(out) else out

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def drop_connections(self, nodes: set[int]) -> None:
        for conn in [c for c in self._conns if c.node.index in nodes]:
            conn.writer.transport.abort()

    # -- connections -----------------------------------------------------
    async def _serve(
        self, node: NodeInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if node.index in self.faults.down:
            writer.transport.abort()
            return
        conn = _Conn(node, writer, authenticated=self.users is None)
        self._conns.add(conn)
        try:
            while True:
                frame = await read_frame(reader)
                if frame.version not in SUPPORTED_VERSIONS:
                    error = CqlError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"Invalid or unsupported protocol version "
                        f"({frame.version}); supported versions are (3/v3, 4/v4)",
                    )
                    writer.write(encode_frame(4, frame.stream, Opcode.ERROR, error.body()))
                    await writer.drain()
                    break
                task = asyncio.get_running_loop().create_task(self._dispatch(conn, frame))
                conn.tasks.add(task)
                task.add_done_callback(conn.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolViolation, ssl.SSLError):
            pass
        finally:
            self._conns.discard(conn)
            for task in list(conn.tasks):
                task.cancel()
            writer.transport.abort()

    async def _dispatch(self, conn: _Conn, frame: Frame) -> None:
        try:
            opcode, body = await self._respond(conn, frame)
        except CqlError as exc:
            opcode, body = Opcode.ERROR, exc.body()
        except ProtocolViolation as exc:
            opcode, body = Opcode.ERROR, CqlError(ErrorCode.PROTOCOL_ERROR, str(exc)).body()
        except Exception as exc:  # a bug in the fake: answer like a node with a ServerError
            log.exception("cqlserver failed on opcode %s", frame.opcode)
            opcode, body = Opcode.ERROR, CqlError(ErrorCode.SERVER_ERROR, repr(exc)).body()
        if not conn.writer.is_closing():
            conn.writer.write(encode_frame(frame.version, frame.stream, opcode, body))

    async def _respond(self, conn: _Conn, frame: Frame) -> tuple[int, bytes]:
        op, r = frame.opcode, Reader(frame.body)
        if op == Opcode.OPTIONS:
            return Opcode.SUPPORTED, Writer().string_multimap(
                {"CQL_VERSION": ["3.4.7"], "COMPRESSION": [], "PROTOCOL_VERSIONS": ["3/v3", "4/v4"]}
            ).done()
        if op == Opcode.STARTUP:
            r.string_map()
            if self.users is None:
                return Opcode.READY, b""
            return Opcode.AUTHENTICATE, Writer().string(_AUTHENTICATOR).done()
        if op == Opcode.AUTH_RESPONSE:
            parts = (r.bytes_() or b"").split(b"\x00")
            user, password = (parts[-2].decode(), parts[-1].decode()) if len(parts) >= 2 else ("", "")
            if self.users is None or self.users.get(user) != password:
                raise CqlError(
                    ErrorCode.BAD_CREDENTIALS, f"Provided username {user} and/or password are incorrect"
                )
            conn.authenticated = True
            return Opcode.AUTH_SUCCESS, Writer().bytes_(None).done()
        if not conn.authenticated:
            raise CqlError(ErrorCode.PROTOCOL_ERROR, f"Unexpected message {op}: authentication required")
        if op == Opcode.REGISTER:
            r.string_list()
            return Opcode.READY, b""
        if op == Opcode.QUERY:
            query = r.long_string()
            params = read_query_params(r)
            return Opcode.RESULT, await self._run(conn, self._parse(query), params, None)
        if op == Opcode.PREPARE:
            return Opcode.RESULT, encode_prepared(self.db.prepare(r.long_string(), conn.keyspace))
        if op == Opcode.EXECUTE:
            query_id = r.short_bytes()
            params = read_query_params(r)
            prepared = self.db.prepared.get(query_id)
            if prepared is None:
                raise unprepared(query_id)
            return Opcode.RESULT, await self._run(conn, prepared.statement, params, prepared)
        if op == Opcode.BATCH:
            return Opcode.RESULT, await self._batch(conn, r)
        raise CqlError(ErrorCode.PROTOCOL_ERROR, f"unsupported opcode {op}")

    def _parse(self, query: str) -> Statement:
        if query not in self._parsed:
            self._parsed[query] = parse(query)
        return self._parsed[query][0]

    async def _guard(self, conn: _Conn, target: Target | None, consistency: int, work: Callable[[], T]) -> T:
        """Count, delay, fail and route-check one data request around ``work``."""
        if target is None:
            return work()
        stats = self.stats
        stats.requests += 1
        stats.by_node[conn.node.index] += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if self.faults.delay_s:
                await asyncio.sleep(self.faults.delay_s)
            if target.is_write:
                stats.writes += 1
            else:
                stats.reads += 1
            kind = self.faults.take(target, conn.node.index)
            if kind is not None:
                stats.faults_raised += 1
                raise fault_error(kind, consistency, target)
            if target.token is not None:
                rf = self.db.keyspaces[target.keyspace].replication_factor(self.db.cluster.datacenter)
                if conn.node.index not in self.db.cluster.ring.replicas(target.token, rf):
                    stats.misrouted += 1
            return work()
        finally:
            stats.in_flight -= 1

    async def _run(
        self, conn: _Conn, stmt: Statement, params: QueryParams, prepared: Prepared | None
    ) -> bytes:
        target = self.db.target(stmt, params.values, conn.keyspace)

        def work() -> bytes:
            result = self.db.execute(
                stmt,
                params.values,
                conn.keyspace,
                conn.node,
                page_size=params.page_size,
                paging_state=params.paging_state,
                default_ts=params.timestamp,
            )
            if isinstance(result, SetKeyspace):
                conn.keyspace = result.keyspace
            return encode_result(result, skip_metadata=params.skip_metadata and prepared is not None)

        return await self._guard(conn, target, params.consistency, work)

    async def _batch(self, conn: _Conn, r: Reader) -> bytes:
        r.byte()  # logged / unlogged / counter: all applied the same way here
        items: list[tuple[Statement, list[Any]]] = []
        for _ in range(r.short()):
            if r.byte() == 0:
                stmt = self._parse(r.long_string())
            else:
                query_id = r.short_bytes()
                prepared = self.db.prepared.get(query_id)
                if prepared is None:
                    raise unprepared(query_id)
                stmt = prepared.statement
            if not isinstance(stmt, Insert | Update | Delete):
                raise invalid("Only INSERT, UPDATE and DELETE statements are allowed in a BATCH")
            items.append((stmt, [r.value() for _ in range(r.short())]))
        consistency = r.short()
        flags = r.byte()
        if flags & 0x10:
            r.short()
        default_ts = r.long() if flags & 0x20 else None
        target = self.db.target(items[0][0], items[0][1], conn.keyspace) if items else None
        if target is not None:
            target.token = None  # a batch spans partitions: no routing check

        def work() -> bytes:
            for stmt, values in items:
                self.db.execute(stmt, values, conn.keyspace, conn.node, default_ts=default_ts)
            return encode_result(Void())

        return await self._guard(conn, target, consistency, work)
