"""The system tables a driver reads at connect: ``system.local``, ``system.peers(_v2)``, ``system_schema``.

Why these and only these: cassandra-driver discovers nodes, tokens (for
token-aware routing), the partitioner and keyspace replication from them.
``system_schema.keyspaces`` is real (replication drives the driver's replica
map); tables, columns, indexes and the rest answer with no rows, so the
driver's table metadata stays empty, which it tolerates: prepared statements
carry their own column and partition-key metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codec import BOOLEAN, INET, INT, MAP_TEXT_TEXT, SET_TEXT, TEXT, UUID, CqlType, decode, encode
from .framing import Value, invalid
from .statements import Literal, Select
from .storage import Keyspace, Ring

PARTITIONER = "org.apache.cassandra.dht.Murmur3Partitioner"
_NODE_COMMON = [
    ("data_center", TEXT),
    ("host_id", UUID),
    ("rack", TEXT),
    ("release_version", TEXT),
    ("schema_version", UUID),
    ("tokens", SET_TEXT),
]
_COLUMNS: dict[str, list[tuple[str, CqlType]]] = {
    "system.local": [
        ("key", TEXT),
        ("bootstrapped", TEXT),
        ("broadcast_address", INET),
        ("broadcast_port", INT),
        ("cluster_name", TEXT),
        ("cql_version", TEXT),
        ("listen_address", INET),
        ("listen_port", INT),
        ("native_protocol_version", TEXT),
        ("partitioner", TEXT),
        ("rpc_address", INET),
        ("rpc_port", INT),
        *_NODE_COMMON,
    ],
    "system.peers": [("peer", INET), ("preferred_ip", INET), ("rpc_address", INET), *_NODE_COMMON],
    "system.peers_v2": [
        ("peer", INET),
        ("peer_port", INT),
        ("native_address", INET),
        ("native_port", INT),
        ("preferred_ip", INET),
        ("preferred_port", INT),
        *_NODE_COMMON,
    ],
    "system_schema.keyspaces": [
        ("keyspace_name", TEXT),
        ("durable_writes", BOOLEAN),
        ("replication", MAP_TEXT_TEXT),
    ],
}
_EMPTY = {
    "system_schema.tables",
    "system_schema.columns",
    "system_schema.types",
    "system_schema.functions",
    "system_schema.aggregates",
    "system_schema.triggers",
    "system_schema.indexes",
    "system_schema.views",
    "system_virtual_schema.keyspaces",
    "system_virtual_schema.tables",
    "system_virtual_schema.columns",
}
SYSTEM_KEYSPACES = {"system", "system_schema", "system_virtual_schema", "system_auth", "system_traces"}


@dataclass(slots=True)
class NodeInfo:
    index: int
    host: str
    port: int
    host_id: uuid.UUID


@dataclass(slots=True)
class Cluster:
    """What the system tables describe: nodes, ring, version, schema version, keyspaces."""

    nodes: list[NodeInfo]
    ring: Ring
    datacenter: str
    release_version: str
    keyspaces: dict[str, Keyspace]
    schema_version: uuid.UUID
    cluster_name: str = "cqlserver"

    def node_row(self, node: NodeInfo) -> dict[str, Any]:
        return {
            "data_center": self.datacenter,
            "host_id": node.host_id,
            "rack": "rack1",
            "release_version": self.release_version,
            "schema_version": self.schema_version,
            "tokens": self.ring.node_tokens(node.index),
        }


ColumnSpec = tuple[str, str, str, CqlType]
Rows = tuple[list[ColumnSpec], list[list[bytes | None]]]


def is_system(keyspace: str) -> bool:
    return keyspace in SYSTEM_KEYSPACES


def select_system(cluster: Cluster, node: NodeInfo, stmt: Select, values: list[Value]) -> Rows:
    """Run a ``SELECT`` on a system table (equality filters on literals or markers only)."""
    name = f"{stmt.keyspace}.{stmt.table}"
    if name in _EMPTY:  # the driver needs at least one column to decode an empty result
        return [(stmt.keyspace or "", stmt.table, "keyspace_name", TEXT)], []
    if name not in _COLUMNS:
        raise invalid(f"table {stmt.table} does not exist")
    columns = dict(_COLUMNS[name])
    rows = _ROWS[name](cluster, node)
    for rel in stmt.where:
        ctype = columns.get(rel.column)
        if ctype is None or rel.op != "=" or isinstance(rel.value, list):
            raise invalid(f"unsupported restriction on {name}: {rel.column}")
        term = rel.value
        raw = encode(ctype, term.value) if isinstance(term, Literal) else values[term.index]
        want = decode(ctype, raw) if isinstance(raw, bytes) else None
        rows = [r for r in rows if r.get(rel.column) == want]
    wanted: list[str] = []
    for sel in stmt.selectors:
        if sel.kind == "star":
            wanted.extend(columns)
        elif sel.kind == "column" and sel.column in columns:
            wanted.append(sel.column)
        else:
            raise invalid(f"Undefined column name {sel.column} in table {name}")
    specs = [(stmt.keyspace or "", stmt.table, c, columns[c]) for c in wanted]
    return specs, [[encode(columns[c], r.get(c)) for c in wanted] for r in rows]


def _local(cluster: Cluster, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "key": "local",
            "bootstrapped": "COMPLETED",
            "broadcast_address": node.host,
            "broadcast_port": 7000,
            "cluster_name": cluster.cluster_name,
            "cql_version": "3.4.7",
            "listen_address": node.host,
            "listen_port": 7000,
            "native_protocol_version": "4",
            "partitioner": PARTITIONER,
            "rpc_address": node.host,
            "rpc_port": node.port,
            **cluster.node_row(node),
        }
    ]


def _peers(cluster: Cluster, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {"peer": n.host, "preferred_ip": n.host, "rpc_address": n.host, **cluster.node_row(n)}
        for n in cluster.nodes
        if n is not node
    ]


def _peers_v2(cluster: Cluster, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "peer": n.host,
            "peer_port": 7000 + n.index,
            "native_address": n.host,
            "native_port": n.port,
            "preferred_ip": n.host,
            "preferred_port": 7000 + n.index,
            **cluster.node_row(n),
        }
        for n in cluster.nodes
        if n is not node
    ]


def _keyspaces(cluster: Cluster, node: NodeInfo) -> list[dict[str, Any]]:
    system = [
        {
            "keyspace_name": k,
            "durable_writes": True,
            "replication": {"class": "org.apache.cassandra.locator.LocalStrategy"},
        }
        for k in ("system", "system_schema")
    ]
    return system + [
        {"keyspace_name": ks.name, "durable_writes": ks.durable_writes, "replication": dict(ks.replication)}
        for ks in cluster.keyspaces.values()
    ]


_ROWS: dict[str, Callable[[Cluster, NodeInfo], list[dict[str, Any]]]] = {
    "system.local": _local,
    "system.peers": _peers,
    "system.peers_v2": _peers_v2,
    "system_schema.keyspaces": _keyspaces,
}
