"""The production profile store on Apache Cassandra (cassandra-driver).

Why it is built this way:

* Prepared statements only (all in ``cql/queries.cql``), token-aware
  over DC-aware routing, ``LOCAL_QUORUM`` by default (``cassandra_config.build_cluster``).
* Every write and delete carries ``USING TIMESTAMP`` = the row's data-derived
  ``write_ts``: Cassandra's own last-write-wins makes replays harmless and
  keeps an older event from overwriting newer state, with no read-before-write.
* Bounded async concurrency: driver futures are bridged into asyncio and a
  semaphore of ``max_in_flight`` permits gives backpressure, so a big batch
  waits for permits instead of flooding the cluster, and the loop stays free.
* Failures sorted for the worker: timeouts, Unavailable, overload, "no host
  reachable" raise ``StoreUnavailable`` (retry the batch); a missing keyspace
  or table, bad credentials or TLS trouble raise ``StoreError`` saying what to do.
* Vectors use 5.0's ``vector<float, N>`` with an SAI ANN index; on 4.x
  (``vector_mode=blob``) they are float32 blobs scored client-side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from operator import attrgetter
from typing import Any

import cassandra
import numpy as np
from cassandra.cluster import Cluster, Session
from cassandra.protocol import SyntaxException
from cassandra.query import PreparedStatement

from schemas.sequence import (
    ErasureMarker,
    IdentityLinkRecord,
    PersonState,
    Profile,
    erasure_write_ts,
    event_write_ts,
)
from streams.faults import crash_point
from streams.stores.base import ForgetReceipt, StoreBatch, StoreError
from streams.stores.cassandra_config import CassandraConfig, build_cluster, load_queries, render_cql
from streams.stores.cassandra_driver import float_vector_size, settle, translate, use_numpy_vectors
from streams.stores.codec import (
    INIT_HINT,
    pack_events,
    pack_interests,
    top_k,
    unpack_events,
    unpack_interests,
    vector_bytes,
)

_COUNTS = attrgetter("event_count", "first_ts_ms", "last_ts_ms", "platforms", "write_ts")
ADDED_COLUMNS = (("profiles", "interests", "blob"),)  # (table, column, type) added after the first release
Page = tuple[list[Any], bytes | None]


class CassandraStore:
    """``ProfileStore`` on a Cassandra cluster; build it with ``factory.open_store``."""

    url_scheme = "cassandra"

    def __init__(self, config: CassandraConfig) -> None:
        self.cfg = config
        self.native: bool | None = None  # vector<float, N> (True) or blob (False), known after open()
        self.dim: int | None = None
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._ps: dict[str, PreparedStatement] = {}
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- connection ------------------------------------------------------
    def _connect_blocking(self) -> None:
        cluster = build_cluster(self.cfg)
        try:
            session = cluster.connect()
        except BaseException as exc:
            cluster.shutdown()
            raise translate(exc, self.cfg) from exc
        session.default_fetch_size = self.cfg.fetch_size
        self._cluster, self._session = cluster, session

    async def _ensure_connected(self) -> Session:
        if self._session is None:
            self._loop = asyncio.get_running_loop()
            self._sem = asyncio.Semaphore(self.cfg.max_in_flight)
            await asyncio.to_thread(self._connect_blocking)
        assert self._session is not None
        return self._session

    def _prepare_blocking(self, session: Session) -> None:
        ks, cfg = self.cfg.keyspace, self.cfg
        if self._cluster is not None and ks not in self._cluster.metadata.keyspaces:
            raise StoreError(f"Cassandra keyspace {ks!r} does not exist at {cfg.where}; {INIT_HINT}")
        queries, prepared = load_queries(ks), {}
        ann = queries.pop("ann")
        for name, cql in queries.items():
            try:
                prepared[name] = session.prepare(cql)
            except cassandra.InvalidRequest as exc:
                table = cql.split(f" {ks}.")[1].split()[0]
                raise StoreError(
                    f"Cassandra table {ks}.{table} is missing or differs ({exc}); {INIT_HINT}"
                ) from exc
        embedding = next(c[3] for c in prepared["get_profile"].result_metadata if c[2] == "embedding")
        self.dim = float_vector_size(embedding)
        self.native = self.dim is not None
        if cfg.vector_mode != "auto" and self.native != (cfg.vector_mode == "native"):
            stored = "vector" if self.native else "blob"
            raise StoreError(
                f"{ks}.profiles stores vectors as {stored} but the URL says vector_mode={cfg.vector_mode}"
            )
        if self.native:
            prepared["ann"] = session.prepare(ann)
        for statement in prepared.values():
            statement.consistency_level = cassandra.ConsistencyLevel.name_to_value[cfg.consistency]
            statement.is_idempotent = True
            use_numpy_vectors(statement)
        self._ps = prepared

    # -- lifecycle -------------------------------------------------------
    async def open(self) -> None:
        session = await self._ensure_connected()
        try:
            await asyncio.to_thread(self._prepare_blocking, session)
        except BaseException as exc:
            raise translate(exc, self.cfg) from exc

    async def close(self) -> None:
        cluster, self._cluster, self._session, self._ps = self._cluster, None, None, {}
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    def wants_native(self) -> bool:
        """Vector mode for ``init_schema``: forced by the URL, else native iff every node runs 5.0+."""
        if self.cfg.vector_mode != "auto":
            return self.cfg.vector_mode == "native"
        assert self._cluster is not None
        versions = [h.release_version or "0" for h in self._cluster.metadata.all_hosts()]
        return bool(versions) and all(int(v.split(".")[0]) >= 5 for v in versions)

    @property
    def vector_dim(self) -> int | None:
        """The ``vector<float, N>`` size (None in blob mode: any size fits)."""
        return self.dim

    async def init_schema(self, vector_dim: int) -> None:
        """Create keyspace, tables and (5.0+) SAI indexes if missing; the store is open afterwards."""
        session = await self._ensure_connected()
        native = self.wants_native()
        for cql in render_cql(self.cfg.keyspace, self.cfg.replication, vector_dim, native):
            try:
                await asyncio.to_thread(session.execute, cql, timeout=max(self.cfg.request_timeout_s, 60.0))
            except SyntaxException as exc:
                hint = " (the vector type needs Cassandra 5.0; use vector_mode=blob)" if native else ""
                raise StoreError(f"Cassandra rejected the schema{hint}: {exc}") from exc
            except BaseException as exc:
                raise translate(exc, self.cfg) from exc
        await self._add_missing_columns(session)
        await self.open()
        if self.dim is not None and self.dim != vector_dim:
            raise StoreError(
                f"{self.cfg.keyspace}.profiles holds vector<float, {self.dim}>, not {vector_dim}"
            )

    async def _add_missing_columns(self, session: Session) -> None:
        """Columns added since a keyspace may have been created (CREATE TABLE IF NOT EXISTS keeps old tables)."""
        ks = self.cfg.keyspace
        for table, column, ctype in ADDED_COLUMNS:
            try:
                await asyncio.to_thread(session.prepare, f"SELECT {column} FROM {ks}.{table} LIMIT 1")
                continue
            except cassandra.InvalidRequest:
                pass  # undefined column: add it
            try:
                await asyncio.to_thread(session.execute, f"ALTER TABLE {ks}.{table} ADD {column} {ctype}",
                                        timeout=max(self.cfg.request_timeout_s, 60.0))
            except BaseException as exc:
                raise translate(exc, self.cfg) from exc

    # -- async execution -------------------------------------------------
    def _submit(
        self, name: str, params: Sequence[Any], paging_state: bytes | None = None
    ) -> asyncio.Future[Page]:
        """Send one statement; its driver future is bridged into an asyncio future of (rows, paging state)."""
        if self._session is None or self._loop is None or not self._ps:
            raise StoreError("the Cassandra store is not open: await store.open() first")
        loop, fut = self._loop, self._loop.create_future()
        response = self._session.execute_async(self._ps[name], params, paging_state=paging_state)
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(settle, fut, (rows, response._paging_state), None),
            lambda exc: loop.call_soon_threadsafe(settle, fut, None, exc),
        )
        return fut

    async def _run(self, name: str, params: Sequence[Any], paging_state: bytes | None = None) -> Page:
        assert self._sem is not None
        async with self._sem:
            try:
                return await self._submit(name, params, paging_state)
            except BaseException as exc:
                raise translate(exc, self.cfg) from exc

    async def _pages(self, name: str, params: Sequence[Any]) -> AsyncIterator[list[Any]]:
        state: bytes | None = None
        while True:
            rows, state = await self._run(name, params, state)
            yield rows
            if not state:
                return

    async def _all(self, name: str, params: Sequence[Any]) -> list[Any]:
        return [row async for page in self._pages(name, params) for row in page]

    async def _run_many(self, items: Iterable[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Run statements concurrently, at most ``max_in_flight`` at once; stop sending after a failure."""
        sem, failed = self._sem, False
        assert sem is not None
        futures: list[asyncio.Future[Page]] = []

        def done(fut: asyncio.Future[Page]) -> None:
            nonlocal failed
            sem.release()
            failed = failed or fut.cancelled() or fut.exception() is not None

        for name, params in items:
            await sem.acquire()
            if failed:
                sem.release()
                break
            try:
                fut = self._submit(name, params)
            except BaseException as exc:
                sem.release()
                raise translate(exc, self.cfg) from exc
            fut.add_done_callback(done)
            futures.append(fut)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise translate(result, self.cfg) from result
        return [r[0] for r in results if not isinstance(r, BaseException)]

    # -- worker hot path -------------------------------------------------
    async def _per_key(self, name: str, keys: Sequence[str]) -> list[Any]:
        pages = await self._run_many((name, (key,)) for key in dict.fromkeys(keys))
        return [row for rows in pages for row in rows]

    async def load_states(self, person_ids: Sequence[str]) -> dict[str, PersonState]:
        return {row[0]: _state(row) for row in await self._per_key("get_state", person_ids)}

    async def load_erasures(self, person_ids: Sequence[str]) -> dict[str, ErasureMarker]:
        return {r[0]: ErasureMarker(r[0], r[1]) for r in await self._per_key("get_erasure", person_ids)}

    async def resolve_links(self, anon_person_ids: Sequence[str]) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._per_key("get_link", anon_person_ids) if r[1] is not None}

    async def load_links(self, anon_person_ids: Sequence[str]) -> dict[str, IdentityLinkRecord]:
        rows = await self._per_key("get_link", anon_person_ids)
        return {r[0]: IdentityLinkRecord(r[0], r[1], r[2] or 0) for r in rows if r[1] is not None}

    def _first_items(self, batch: StoreBatch) -> Iterable[tuple[str, Sequence[Any]]]:
        """Phase 1: profiles, which a replay cannot rebuild once the state has landed."""
        for p in batch.profiles:
            vector = p.vector if self.native else vector_bytes(p.vector)
            yield "put_profile", (p.person_id, p.model_version, vector, *_COUNTS(p), p.updated_ms,
                                  pack_interests(p.interests) or None, p.write_ts)

    def _second_items(self, batch: StoreBatch) -> Iterable[tuple[str, Sequence[Any]]]:
        """Phase 2: states and the removal of moved device states, once phase 1 is acknowledged."""
        for pid, ts in batch.removed_states:
            yield "del_state", (ts, pid)
            yield "del_profiles", (ts, pid)
        for s in batch.states:
            yield "put_state", (s.person_id, pack_events(s.events), *_COUNTS(s), s.write_ts)

    def _third_items(self, batch: StoreBatch) -> Iterable[tuple[str, Sequence[Any]]]:
        """Phase 3: identity links, last: a stored link means its device's state was already moved."""
        for link in batch.links:
            yield "put_link", (link.anon_person_id, link.person_id, link.ts_ms, event_write_ts(link.ts_ms))
            yield "put_link_rev", (link.person_id, link.anon_person_id, link.ts_ms, event_write_ts(link.ts_ms))

    async def write_batch(self, batch: StoreBatch) -> None:
        for p in batch.profiles:
            if self.dim is not None and p.vector.size != self.dim:
                raise ValueError(
                    f"profile of {p.person_id} has a {p.vector.size}-dim vector; "
                    f"{self.cfg.keyspace}.profiles holds vector<float, {self.dim}>"
                )
        # Why phases: Cassandra has no transaction across tables.  Profiles go first; a crash after
        # them leaves the state behind, so the replay finds the events new again, re-encodes and
        # writes both (states first would leave a replay that finds only duplicates and never
        # rewrites a lost profile).  Links go last: a replay that finds no link yet moves the
        # device's state again, while a stored link with the device state left behind would orphan it.
        await self._run_many(self._first_items(batch))
        crash_point("between_writes")
        await self._run_many(self._second_items(batch))
        await self._run_many(self._third_items(batch))

    # -- queries ---------------------------------------------------------
    async def get_profile(self, person_id: str, model_version: str) -> Profile | None:
        rows, _ = await self._run("get_profile", (person_id, model_version))
        return _profile(rows[0]) if rows else None

    async def get_profiles(self, person_id: str) -> list[Profile]:
        rows = await self._all("get_profiles", (person_id,))
        return sorted((_profile(r) for r in rows), key=lambda p: (-p.write_ts, p.model_version))

    async def nearest_people(
        self, vector: np.ndarray, model_version: str, k: int, exclude: Sequence[str] = ()
    ) -> list[tuple[str, float]]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if k <= 0:
            return []
        if self.native:  # the ANN index picks candidates; score them exactly, as the other backends do
            rows, _ = await self._run("ann", (model_version, query, k + len(set(exclude))))
            matrix = np.stack([r[1] for r in rows]) if rows else np.empty((0, query.size), np.float32)
            return top_k([r[0] for r in rows], matrix, query, k, exclude)
        best: list[tuple[str, float]] = []
        async for page in self._pages("scan_version", (model_version,)):
            page = [r for r in page if r[1] is not None and len(r[1]) == 4 * query.size]
            if page:
                matrix = np.frombuffer(b"".join(r[1] for r in page), dtype="<f4").reshape(len(page), -1)
                best = sorted(
                    best + top_k([r[0] for r in page], matrix, query, k, exclude), key=lambda p: -p[1]
                )
        return sorted(best, key=lambda p: (-p[1], p[0]))[:k]

    async def iter_states(self, after: str | None, limit: int) -> list[PersonState]:
        """A page of states in token order (Cassandra cannot order partitions by key); resumable by id."""
        if after is None:
            return [_state(r) for r in await self._all("scan_states", (limit,))]
        return [_state(r) for r in await self._all("scan_states_after", (after, limit))]

    async def count_profiles(self, model_version: str) -> int:
        return sum([len(page) async for page in self._pages("scan_version_ids", (model_version,))])

    async def count_states(self) -> int:
        return sum([len(page) async for page in self._pages("scan_state_ids", ())])

    # -- erasure ---------------------------------------------------------
    async def forget(self, person_id: str, erased_ms: int) -> ForgetReceipt:
        """Delete at ``erasure_write_ts(erased_ms)`` (newer rows survive) and leave a marker with the retention TTL."""
        profiles, state, reverse, own = await asyncio.gather(
            self._all("get_profiles", (person_id,)),
            self._all("get_state", (person_id,)),
            self._all("get_links_rev", (person_id,)),
            self._all("get_link", (person_id,)),
        )
        # Cover every stored event, also those dated ahead of the clock (no transaction here: read, then delete).
        erased_ms = max([erased_ms, *(int(r[4] or 0) for r in state), *(int(r[5] or 0) for r in profiles)])
        ts = erasure_write_ts(erased_ms)
        linked = await self._per_key("get_link", [r[0] for r in reverse])  # only links still pointing here
        doomed = [r[0] for r in linked if r[1] == person_id and event_write_ts(r[2]) <= ts]
        doomed += [r[0] for r in own if event_write_ts(r[2]) <= ts]
        ttl = self.cfg.erasure_retention_days * 86_400
        await self._run_many(
            [
                ("del_profiles", (ts, person_id)),
                ("del_state", (ts, person_id)),
                ("del_links_rev", (ts, person_id)),
                *[("del_link", (ts, anon)) for anon in doomed],
                ("put_erasure", (person_id, erased_ms, ts, ttl)),
            ]
        )
        deleted = sum(1 for r in profiles if r[7] <= ts)
        return ForgetReceipt(person_id, erased_ms, deleted, any(r[6] <= ts for r in state), len(doomed))


def _state(row: Sequence[Any]) -> PersonState:
    pid, events, count, first, last, platforms, write_ts = row
    events_list = unpack_events(events) if events else []
    return PersonState(
        pid, events_list, count or 0, first or 0, last or 0, dict(platforms or {}), write_ts or 0
    )


def _profile(row: Sequence[Any]) -> Profile:
    pid, version, raw, count, first, last, platforms, write_ts, updated_ms, interests = row
    vector = np.frombuffer(raw, dtype="<f4").copy() if isinstance(raw, bytes) else np.asarray(raw, np.float32)
    return Profile(pid, version, vector, count or 0, first or 0, last or 0, dict(platforms or {}), write_ts or 0,
                   updated_ms or 0, unpack_interests(interests))
