"""Executes parsed statements with Cassandra's semantics against the in-memory storage.

Why it validates like Cassandra (filtering needs ALLOW FILTERING or an index,
ANN needs an SAI index and a LIMIT, missing keyspaces and tables are
InvalidRequest): a statement the store sends must be one a real cluster
accepts, so the test suite catches CQL that only works against the fake.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from dataclasses import dataclass, field

from .codec import BIGINT, INT, CqlType, encode, make_type
from .ddl import apply_ddl
from .framing import UNSET, Value, invalid
from .parser import parse
from .query import run_select
from .statements import (
    AlterTableAdd,
    CreateIndex,
    CreateKeyspace,
    CreateTable,
    Delete,
    Drop,
    Insert,
    Marker,
    Relation,
    Select,
    Statement,
    Term,
    Truncate,
    Update,
    Use,
)
from .storage import Key, Keyspace, Ring, Table, token_of
from .system import Cluster, ColumnSpec, NodeInfo, is_system, select_system


@dataclass(slots=True)
class Rows:
    specs: list[ColumnSpec]
    rows: list[list[bytes | None]]
    paging_state: bytes | None = None


@dataclass(slots=True)
class Void:
    pass


@dataclass(slots=True)
class SetKeyspace:
    keyspace: str


@dataclass(slots=True)
class SchemaChange:
    change: str
    target: str
    keyspace: str
    name: str = ""


Result = Rows | Void | SetKeyspace | SchemaChange


@dataclass(slots=True)
class Prepared:
    query_id: bytes
    query: str
    statement: Statement
    keyspace: str | None
    bind_specs: list[ColumnSpec]
    pk_indexes: list[int]
    result_specs: list[ColumnSpec]


@dataclass(slots=True)
class Target:
    """Where a data statement lands: keyspace, table and, when fully restricted, its partition token."""

    keyspace: str
    table: str
    is_write: bool
    token: int | None = None


@dataclass
class Database:
    """All nodes share one database; only routing and faults are per node."""

    cluster: Cluster
    clock_offset: float = 0.0
    prepared: dict[bytes, Prepared] = field(default_factory=dict)

    @classmethod
    def create(cls, nodes: int, release_version: str, datacenter: str = "datacenter1") -> Database:
        infos = [NodeInfo(i, "127.0.0.1", 0, uuid.UUID(int=i + 1)) for i in range(nodes)]
        cluster = Cluster(infos, Ring(nodes), datacenter, release_version, {}, uuid.uuid4())
        return cls(cluster)

    @property
    def keyspaces(self) -> dict[str, Keyspace]:
        return self.cluster.keyspaces

    @property
    def supports_vectors(self) -> bool:
        return int(self.cluster.release_version.split(".")[0]) >= 5

    def now(self) -> float:
        return time.time() + self.clock_offset

    # -- resolution ------------------------------------------------------
    def keyspace_of(self, name: str | None, session_ks: str | None) -> Keyspace:
        ks_name = name or session_ks
        if ks_name is None:
            raise invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename"
            )
        ks = self.keyspaces.get(ks_name)
        if ks is None:
            raise invalid(f"Keyspace {ks_name} does not exist")
        return ks

    def table_of(self, ks_name: str | None, table: str, session_ks: str | None) -> Table:
        ks = self.keyspace_of(ks_name, session_ks)
        tbl = ks.tables.get(table)
        if tbl is None:
            raise invalid(f"table {table} does not exist")
        return tbl

    # -- prepare ---------------------------------------------------------
    def prepare(self, query: str, session_ks: str | None) -> Prepared:
        stmt, markers = parse(query)
        bind: list[ColumnSpec] = []
        pk: list[int] = []
        result: list[ColumnSpec] = []
        if isinstance(stmt, Select) and is_system(stmt.keyspace or session_ks or ""):
            raise invalid("preparing system queries is not supported by this test server")
        if isinstance(stmt, Select | Insert | Update | Delete):
            table = self.table_of(stmt.keyspace, stmt.table, session_ks)
            bind, pk = _bind_specs(stmt, table, markers)
            if isinstance(stmt, Select):
                result = _result_specs(stmt, table)
        query_id = hashlib.md5(f"{session_ks}:{query}".encode()).digest()
        prepared = Prepared(query_id, query, stmt, session_ks, bind, pk, result)
        self.prepared[query_id] = prepared
        return prepared

    # -- execute ---------------------------------------------------------
    def target(self, stmt: Statement, values: list[Value], session_ks: str | None) -> Target | None:
        """The data target of a statement (None for DDL and system tables): used for faults and routing."""
        if not isinstance(stmt, Select | Insert | Update | Delete):
            return None
        ks_name = stmt.keyspace or session_ks or ""
        if is_system(ks_name) or ks_name not in self.keyspaces:
            return None
        table = self.keyspaces[ks_name].tables.get(stmt.table)
        if table is None:
            return None
        keys = _partition_keys(stmt, table, values) if not isinstance(stmt, Select) or stmt.where else None
        token = token_of(keys[0]) if keys and len(keys) == 1 else None
        return Target(ks_name, stmt.table, not isinstance(stmt, Select), token)

    def execute(
        self,
        stmt: Statement,
        values: list[Value],
        session_ks: str | None,
        node: NodeInfo,
        *,
        page_size: int | None = None,
        paging_state: bytes | None = None,
        default_ts: int | None = None,
    ) -> Result:
        if isinstance(stmt, Select):
            if is_system(stmt.keyspace or session_ks or ""):
                specs, rows = select_system(self.cluster, node, stmt, values)
                return Rows(specs, rows)
            table = self.table_of(stmt.keyspace, stmt.table, session_ks)
            out, state = run_select(stmt, table, values, self.now(), page_size, paging_state)
            return Rows(_result_specs(stmt, table), out, state)
        if isinstance(stmt, Insert | Update | Delete):
            table = self.table_of(stmt.keyspace, stmt.table, session_ks)
            self.mutate(stmt, table, values, default_ts)
            return Void()
        if isinstance(stmt, Use):
            return SetKeyspace(self.keyspace_of(stmt.keyspace, None).name)
        if isinstance(stmt, Truncate):
            self.table_of(stmt.keyspace, stmt.table, session_ks).partitions.clear()
            return Void()
        if isinstance(stmt, CreateKeyspace | CreateTable | CreateIndex | Drop | AlterTableAdd):
            change = apply_ddl(self, stmt, session_ks)
            if change is None:
                return Void()
            self.cluster.schema_version = uuid.uuid4()
            return SchemaChange(*change)
        raise invalid(f"unsupported statement {type(stmt).__name__}")

    def mutate(
        self, stmt: Insert | Update | Delete, table: Table, values: list[Value], default_ts: int | None
    ) -> None:
        ts_raw = _term(stmt.timestamp, BIGINT, values) if stmt.timestamp is not None else None
        ts = _int(ts_raw, BIGINT) if isinstance(ts_raw, bytes) else (default_ts or int(self.now() * 1e6))
        if isinstance(stmt, Delete):
            ck = _clustering(stmt.where, table, values)
            for key in _partition_keys(stmt, table, values) or []:
                table.delete(key, ck, ts, [c for c in stmt.columns] or None)
            return
        ttl_raw = _term(stmt.ttl, INT, values) if stmt.ttl is not None else None
        ttl = _int(ttl_raw, INT) if isinstance(ttl_raw, bytes) else 0
        expires = self.now() + ttl if ttl > 0 else None
        if isinstance(stmt, Insert):
            given = {
                c: _term(t, table.columns[c], values) for c, t in zip(stmt.columns, stmt.values, strict=False)
            }
            missing = [c for c in table.primary_key if not isinstance(given.get(c), bytes)]
            if missing:
                raise invalid(
                    f"Some clustering keys are missing: {', '.join(missing)}"
                    if missing[0] in table.clustering
                    else f"Invalid null value for {missing[0]}"
                )
            key = tuple(_bytes(given[c]) for c in table.partition_key)
            ck = tuple(_bytes(given[c]) for c in table.clustering)
            cells = {c: v for c, v in given.items() if c not in table.primary_key and v is not UNSET}
            table.write(
                key,
                ck,
                {c: v if isinstance(v, bytes) else None for c, v in cells.items()},
                ts,
                expires,
                marker=True,
            )
            return
        ck = _clustering(stmt.where, table, values)
        if ck is None and table.clustering:
            raise invalid("Some clustering keys are missing")
        sets = {c: _term(t, table.columns[c], values) for c, t in stmt.assignments}
        for key in _partition_keys(stmt, table, values) or []:
            table.write(
                key,
                ck or (),
                {c: v if isinstance(v, bytes) else None for c, v in sets.items() if v is not UNSET},
                ts,
                expires,
                marker=False,
            )


def _bytes(v: Value) -> bytes:
    assert isinstance(v, bytes)
    return v


def _int(raw: bytes, t: CqlType) -> int:
    return int.from_bytes(raw, "big", signed=True)


def _term(term: Term, t: CqlType, values: list[Value]) -> Value:
    if isinstance(term, Marker):
        if term.index >= len(values):
            raise invalid(f"There were {len(values)} markers(?) in CQL but {term.index + 1} bound variables")
        return values[term.index]
    return encode(t, term.value)


def _eq_values(rel: Relation, t: CqlType, values: list[Value]) -> list[bytes]:
    if rel.op == "=" and not isinstance(rel.value, list):
        return [_bytes(_term(rel.value, t, values))]
    if rel.op == "IN" and isinstance(rel.value, list):
        return [_bytes(_term(v, t, values)) for v in rel.value]
    raise invalid(f"Only EQ and IN relation are supported on the partition key {rel.column}")


def _partition_keys(
    stmt: Select | Insert | Update | Delete, table: Table, values: list[Value]
) -> list[Key] | None:
    """Partition keys a statement names (None if the partition key is not fully restricted)."""
    if isinstance(stmt, Insert):
        given = dict(zip(stmt.columns, stmt.values, strict=False))
        if any(c not in given for c in table.partition_key):
            return None
        return [tuple(_bytes(_term(given[c], table.columns[c], values)) for c in table.partition_key)]
    rels = {r.column: r for r in stmt.where if not r.token and r.column in table.partition_key}
    if len(rels) != len(table.partition_key):
        if isinstance(stmt, Select):
            return None
        raise invalid("Some partition key parts are missing: " + ", ".join(table.partition_key))
    parts = [_eq_values(rels[c], table.columns[c], values) for c in table.partition_key]
    return [tuple(p) for p in itertools.product(*parts)]


def _clustering(where: list[Relation], table: Table, values: list[Value]) -> Key | None:
    rels = {r.column: r for r in where if r.column in table.clustering}
    if not rels:
        return None
    if len(rels) != len(table.clustering):
        raise invalid("Clustering key columns must be fully restricted here")
    return tuple(_eq_values(rels[c], table.columns[c], values)[0] for c in table.clustering)


def _bind_specs(
    stmt: Select | Insert | Update | Delete, table: Table, markers: int
) -> tuple[list[ColumnSpec], list[int]]:
    specs: dict[int, ColumnSpec] = {}
    ks, name = table.keyspace, table.name

    def put(term: Term | list[Term] | None, column: str, t: CqlType) -> None:
        terms = term if isinstance(term, list) else [term]
        for item in terms:
            if isinstance(item, Marker):
                specs[item.index] = (ks, name, column, t)

    def column_type(column: str) -> CqlType:
        if column not in table.columns:
            raise invalid(f"Undefined column name {column} in table {ks}.{name}")
        return table.columns[column]

    pk_markers: dict[str, int] = {}
    if isinstance(stmt, Insert):
        for column, term in zip(stmt.columns, stmt.values, strict=False):
            put(term, column, column_type(column))
            if isinstance(term, Marker):
                pk_markers[column] = term.index
    if isinstance(stmt, Update):
        for column, term in stmt.assignments:
            put(term, column, column_type(column))
    if isinstance(stmt, Select):
        for sel in stmt.selectors:
            if sel.kind == "similarity":
                put(sel.arg, sel.column, column_type(sel.column))
        if stmt.ann:
            put(stmt.ann[1], stmt.ann[0], column_type(stmt.ann[0]))
        put(stmt.limit, "[limit]", INT)
    if not isinstance(stmt, Insert):
        for rel in stmt.where:
            t = column_type(rel.column)
            if rel.token and not rel.token_of_value:
                put(rel.value, "partition key token", BIGINT)
            elif rel.op == "IN" and isinstance(rel.value, Marker):
                put(rel.value, rel.column, make_type("list", (t,)))
            else:
                put(rel.value, rel.column, t)
                if rel.op == "=" and isinstance(rel.value, Marker) and not rel.token:
                    pk_markers[rel.column] = rel.value.index
    if not isinstance(stmt, Select):
        put(stmt.timestamp, "[timestamp]", BIGINT)
    if isinstance(stmt, Insert | Update):
        put(stmt.ttl, "[ttl]", INT)
    missing = [i for i in range(markers) if i not in specs]
    if missing:
        raise invalid(f"cannot infer the type of bind marker {missing[0]}")
    pk = [pk_markers[c] for c in table.partition_key if c in pk_markers]
    return [specs[i] for i in range(markers)], pk if len(pk) == len(table.partition_key) else []


def _result_specs(stmt: Select, table: Table) -> list[ColumnSpec]:
    ks, name = table.keyspace, table.name
    out: list[ColumnSpec] = []
    for sel in stmt.selectors:
        if sel.kind == "star":
            out.extend((ks, name, c, table.columns[c]) for c in table.column_order())
            continue
        if sel.column and sel.column not in table.columns:
            raise invalid(f"Undefined column name {sel.column} in table {ks}.{name}")
        if sel.kind == "column":
            out.append((ks, name, sel.column, table.columns[sel.column]))
        elif sel.kind == "count":
            out.append((ks, name, "count", BIGINT))
        elif sel.kind == "token":
            out.append((ks, name, f"system.token({sel.column})", BIGINT))
        elif sel.kind == "writetime":
            out.append((ks, name, f"writetime({sel.column})", BIGINT))
        elif sel.kind == "ttl":
            out.append((ks, name, f"ttl({sel.column})", INT))
        else:
            out.append((ks, name, f"system.{sel.func}({sel.column}, ?)", make_type("float")))
    return out
