"""In-memory tables with Cassandra's write semantics.

Why cells and tombstones instead of plain rows: the stores rely on
Cassandra's reconciliation (``USING TIMESTAMP`` last-write-wins per cell,
deletes as timestamped tombstones that shadow older writes, TTL expiry), so
the test server keeps exactly that model: every cell carries its write
timestamp and expiry, partitions and rows carry deletion timestamps, and a
read shows a cell only when it is newer than every covering tombstone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cassandra.metadata import Murmur3Token

from .codec import CqlType, sort_key

NO_DELETION = -(2**63)
Key = tuple[bytes, ...]


@dataclass(slots=True)
class Cell:
    value: bytes | None  # None: a cell tombstone
    ts: int
    expires: float | None = None

    def live(self, now: float) -> bool:
        return self.value is not None and (self.expires is None or self.expires > now)


def reconcile(old: Cell | None, new: Cell) -> Cell:
    """Cassandra's rule: higher timestamp wins; on a tie a tombstone wins, then the larger value."""
    if old is None or new.ts > old.ts:
        return new
    if new.ts < old.ts:
        return old
    if old.value is None or new.value is None:
        return old if old.value is None else new
    return new if new.value > old.value else old


@dataclass(slots=True)
class Row:
    marker: Cell | None = None  # row liveness written by INSERT
    cells: dict[str, Cell] = field(default_factory=dict)
    deleted: int = NO_DELETION


@dataclass(slots=True)
class Partition:
    key: Key
    token: int
    deleted: int = NO_DELETION
    rows: dict[Key, Row] = field(default_factory=dict)


@dataclass(slots=True)
class IndexDef:
    name: str
    column: str
    custom_class: str | None
    options: dict[str, str]


@dataclass(slots=True)
class Table:
    keyspace: str
    name: str
    columns: dict[str, CqlType]
    partition_key: list[str]
    clustering: list[str]
    indexes: dict[str, IndexDef] = field(default_factory=dict)
    partitions: dict[Key, Partition] = field(default_factory=dict)

    @property
    def primary_key(self) -> list[str]:
        return self.partition_key + self.clustering

    def column_order(self) -> list[str]:
        """``SELECT *`` order: partition key, clustering, then the rest alphabetically."""
        rest = sorted(c for c in self.columns if c not in self.primary_key)
        return self.primary_key + rest

    def index_on(self, column: str) -> IndexDef | None:
        return next((ix for ix in self.indexes.values() if ix.column == column), None)

    def partition(self, key: Key, create: bool) -> Partition | None:
        part = self.partitions.get(key)
        if part is None and create:
            part = self.partitions[key] = Partition(key, token_of(key))
        return part

    def write(
        self, key: Key, ck: Key, cells: dict[str, bytes | None], ts: int, expires: float | None, marker: bool
    ) -> None:
        part = self.partition(key, create=True)
        assert part is not None
        row = part.rows.setdefault(ck, Row())
        if marker:
            row.marker = reconcile(row.marker, Cell(b"", ts, expires))
        for name, value in cells.items():
            row.cells[name] = reconcile(
                row.cells.get(name), Cell(value, ts, expires if value is not None else None)
            )

    def delete(self, key: Key, ck: Key | None, ts: int, columns: list[str] | None = None) -> None:
        part = self.partition(key, create=True)
        assert part is not None
        if ck is None:
            part.deleted = max(part.deleted, ts)
            return
        row = part.rows.setdefault(ck, Row())
        if columns:
            for name in columns:
                row.cells[name] = reconcile(row.cells.get(name), Cell(None, ts))
        else:
            row.deleted = max(row.deleted, ts)

    def live_rows(
        self, parts: list[Partition], now: float
    ) -> Iterator[tuple[Partition, Key, dict[str, Cell]]]:
        """Visible rows in partition-then-clustering order with their visible cells."""
        ck_types = [self.columns[c] for c in self.clustering]
        for part in parts:
            for ck in sorted(part.rows, key=lambda k: clustering_order(ck_types, k)):
                row = part.rows[ck]
                shadow = max(part.deleted, row.deleted)
                cells = {n: c for n, c in row.cells.items() if c.ts > shadow and c.live(now)}
                marker_live = row.marker is not None and row.marker.ts > shadow and row.marker.live(now)
                if cells or marker_live:
                    yield part, ck, cells

    def ordered_partitions(self) -> list[Partition]:
        return sorted(self.partitions.values(), key=lambda p: (p.token, p.key))


@dataclass(slots=True)
class Keyspace:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    tables: dict[str, Table] = field(default_factory=dict)

    def replication_factor(self, datacenter: str) -> int:
        strategy = self.replication.get("class", "")
        if strategy.endswith("SimpleStrategy"):
            return int(self.replication.get("replication_factor", "1"))
        return int(self.replication.get(datacenter, "0"))


def clustering_order(types: list[CqlType], key: Key) -> tuple[Any, ...]:
    return tuple(sort_key(t, v) for t, v in zip(types, key, strict=True))


def routing_key(key: Key) -> bytes:
    """The bytes Murmur3 hashes: the value itself, or a composite for multi-column keys."""
    if len(key) == 1:
        return key[0]
    return b"".join(struct.pack(">H", len(part)) + part + b"\x00" for part in key)


def token_of(key: Key) -> int:
    return int(Murmur3Token.hash_fn(routing_key(key)))


class Ring:
    """Token ownership of the fake nodes: ``vnodes`` evenly spread tokens per node, interleaved."""

    def __init__(self, nodes: int, vnodes: int = 8) -> None:
        total = nodes * vnodes
        step = (2**64) // total
        self.tokens: list[tuple[int, int]] = [
            (-(2**63) + step * i + step // 2, i % nodes) for i in range(total)
        ]
        self.nodes = nodes

    def node_tokens(self, node: int) -> list[str]:
        return [str(t) for t, n in self.tokens if n == node]

    def replicas(self, token: int, rf: int) -> list[int]:
        """Nodes owning ``token``: the first ring token >= it, then clockwise distinct nodes."""
        start = next((i for i, (t, _) in enumerate(self.tokens) if t >= token), 0)
        out: list[int] = []
        for j in range(len(self.tokens)):
            node = self.tokens[(start + j) % len(self.tokens)][1]
            if node not in out:
                out.append(node)
            if len(out) >= min(rf, self.nodes):
                break
        return out
