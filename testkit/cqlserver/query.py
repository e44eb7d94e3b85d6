"""``SELECT`` on user tables: restrictions, filtering rules, ANN ordering, paging.

Why paging is by position (token, partition key, clustering key) rather than
offset: that is how Cassandra resumes a page, so rows written between two
pages neither repeat nor vanish from a scan.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from .codec import BIGINT, FLOAT, INT, CqlType, decode, encode, sort_key
from .framing import Value, invalid
from .statements import Literal, Marker, Relation, Select, Term
from .storage import Cell, Key, Partition, Table, clustering_order, token_of

_FILTERING = (
    "Cannot execute this query as it might involve data filtering and thus may have unpredictable "
    "performance. If you want to execute this query despite the performance unpredictability, "
    "use ALLOW FILTERING"
)
_SAI = ("storageattachedindex", "org.apache.cassandra.index.sai.storageattachedindex")


def _raw(term: Term, t: CqlType, values: list[Value]) -> bytes:
    raw = values[term.index] if isinstance(term, Marker) else encode(t, term.value)
    if not isinstance(raw, bytes):
        raise invalid("Invalid null or unset value in a restriction")
    return raw


def similarity(func: str, a: np.ndarray, b: np.ndarray) -> float:
    """Cassandra 5's similarity functions, scaled to [0, 1] like Lucene's."""
    if func.endswith("dot_product"):
        return float((1.0 + float(np.dot(a, b))) / 2.0)
    if func.endswith("euclidean"):
        return float(1.0 / (1.0 + float(np.sum((a - b) ** 2))))
    denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
    return float((1.0 + float(np.dot(a, b)) / denom) / 2.0)


def _vector(t: CqlType, raw: bytes | None) -> np.ndarray | None:
    if raw is None:
        return None
    return np.asarray(decode(t, raw), dtype=np.float64)


def _compare(op: str) -> Callable[[Any, Any], bool]:
    return {
        "=": lambda a, b: a == b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }[op]


def _check_restrictions(stmt: Select, table: Table, pk_restricted: bool) -> None:
    pk_rels = {r.column for r in stmt.where if not r.token and r.column in table.partition_key}
    if pk_rels and not pk_restricted and not stmt.allow_filtering:
        raise invalid(_FILTERING)
    for rel in stmt.where:
        if rel.token or rel.column in table.partition_key:
            continue
        if rel.column not in table.columns:
            raise invalid(f"Undefined column name {rel.column}")
        indexed = table.index_on(rel.column) is not None
        if rel.column in table.clustering and pk_restricted:
            continue
        if not indexed and not stmt.allow_filtering:
            raise invalid(_FILTERING)
    if stmt.ann:
        index = table.index_on(stmt.ann[0])
        if index is None or (index.custom_class or "").lower() not in _SAI:
            raise invalid(
                f"ANN ordering by vector requires the column '{stmt.ann[0]}' to be indexed "
                "using 'StorageAttachedIndex'"
            )
        if stmt.limit is None:
            raise invalid("SAI based ORDER BY clause requires a LIMIT that is not greater than 1000")


def run_select(
    stmt: Select,
    table: Table,
    values: list[Value],
    now: float,
    page_size: int | None,
    paging_state: bytes | None,
) -> tuple[list[list[bytes | None]], bytes | None]:
    limit = decode(INT, _raw(stmt.limit, INT, values)) if stmt.limit is not None else None
    keys = _keys(stmt, table, values)
    _check_restrictions(stmt, table, keys is not None)
    if keys is not None:
        found = (table.partitions.get(k) for k in keys)
        parts = sorted((p for p in found if p is not None), key=lambda p: (p.token, p.key))
    else:
        parts = table.ordered_partitions()
    for rel in stmt.where:
        if rel.token:
            bound = _token_bound(rel, table, values)
            check = _compare(rel.op)
            parts = [p for p in parts if check(p.token, bound)]
    filters = [
        _filter(rel, table, values)
        for rel in stmt.where
        if not rel.token and rel.column not in table.partition_key
    ]
    ck_types = [table.columns[c] for c in table.clustering]

    matches: list[tuple[Partition, Key, dict[str, Cell], dict[str, bytes | None]]] = []
    for part, ck, cells in table.live_rows(parts, now):
        row: dict[str, bytes | None] = dict(zip(table.partition_key, part.key, strict=False))
        row.update(zip(table.clustering, ck, strict=False))
        row.update({n: c.value for n, c in cells.items()})
        if all(f(row) for f in filters):
            matches.append((part, ck, cells, row))

    if any(sel.kind == "count" for sel in stmt.selectors):
        return [[encode(BIGINT, len(matches))]], None
    if stmt.ann:
        column, term = stmt.ann
        ctype = table.columns[column]
        query = np.asarray(decode(ctype, _raw(term, ctype, values)), dtype=np.float64)
        func = (table.index_on(column) or _no_index()).options.get("similarity_function", "cosine")
        scored = []
        for m in matches:
            vec = _vector(ctype, m[3].get(column))
            if vec is not None:
                scored.append((similarity(func, query, vec), m))
        scored.sort(key=lambda s: -s[0])
        matches = [m for _, m in scored]

    start, seen = 0, 0
    if paging_state and not stmt.ann:
        state = json.loads(paging_state)
        last = (
            state["t"],
            tuple(bytes.fromhex(h) for h in state["k"]),
            clustering_order(ck_types, tuple(bytes.fromhex(h) for h in state["c"])),
        )
        seen = state["n"]
        start = next(
            (
                i
                for i, (p, ck, _, _) in enumerate(matches)
                if (p.token, p.key, clustering_order(ck_types, ck)) > last
            ),
            len(matches),
        )
    end = len(matches)
    if limit is not None:
        end = min(end, start + max(limit - seen, 0))
    next_state: bytes | None = None
    if page_size and page_size > 0 and not stmt.ann and end - start > page_size:
        end = start + page_size
        part, ck = matches[end - 1][0], matches[end - 1][1]
        next_state = json.dumps(
            {
                "t": part.token,
                "k": [k.hex() for k in part.key],
                "c": [c.hex() for c in ck],
                "n": seen + end - start,
            }
        ).encode()
    return [_project(stmt, table, m, values, now) for m in matches[start:end]], next_state


def _no_index() -> Any:
    raise invalid("ANN ordering needs an index")


def _keys(stmt: Select, table: Table, values: list[Value]) -> list[Key] | None:
    rels = {r.column: r for r in stmt.where if not r.token and r.column in table.partition_key}
    if len(rels) != len(table.partition_key):
        return None
    keys: list[Key] = [()]
    for column in table.partition_key:
        rel = rels[column]
        t = table.columns[column]
        if rel.op == "=" and not isinstance(rel.value, list):
            options = [_raw(rel.value, t, values)]
        elif rel.op == "IN" and isinstance(rel.value, list):
            options = [_raw(v, t, values) for v in rel.value]
        elif rel.op == "IN" and not isinstance(rel.value, list):
            items = decode(CqlType("list", (t,)), _raw(rel.value, CqlType("list", (t,)), values))
            options = [encode(t, v) or b"" for v in items]
        else:
            return None
        keys = [k + (o,) for k in keys for o in options]
    return keys


def _token_bound(rel: Relation, table: Table, values: list[Value]) -> int:
    if isinstance(rel.value, list):
        raise invalid("token() restrictions take one value")
    if rel.token_of_value:
        return token_of((_raw(rel.value, table.columns[rel.column], values),))
    if isinstance(rel.value, Literal):
        return int(rel.value.value)
    return int(decode(BIGINT, _raw(rel.value, BIGINT, values)))


def _filter(rel: Relation, table: Table, values: list[Value]) -> Callable[[dict[str, bytes | None]], bool]:
    t = table.columns[rel.column]
    if rel.op == "IN":
        if isinstance(rel.value, list):
            wanted = {_raw(v, t, values) for v in rel.value}
        else:
            lt = CqlType("list", (t,))
            wanted = {encode(t, v) or b"" for v in decode(lt, _raw(rel.value, lt, values))}
        return lambda row: row.get(rel.column) in wanted
    assert not isinstance(rel.value, list)
    bound = sort_key(t, _raw(rel.value, t, values))
    check = _compare(rel.op)

    def keep(row: dict[str, bytes | None]) -> bool:
        value = row.get(rel.column)
        return value is not None and check(sort_key(t, value), bound)

    return keep


def _project(
    stmt: Select,
    table: Table,
    match: tuple[Partition, Key, dict[str, Cell], dict[str, bytes | None]],
    values: list[Value],
    now: float,
) -> list[bytes | None]:
    part, _, cells, row = match
    out: list[bytes | None] = []
    for sel in stmt.selectors:
        if sel.kind == "star":
            out.extend(row.get(c) for c in table.column_order())
        elif sel.kind == "column":
            out.append(row.get(sel.column))
        elif sel.kind == "token":
            out.append(encode(BIGINT, part.token))
        elif sel.kind == "writetime":
            cell = cells.get(sel.column)
            out.append(encode(BIGINT, cell.ts) if cell else None)
        elif sel.kind == "ttl":
            cell = cells.get(sel.column)
            out.append(encode(INT, int(cell.expires - now)) if cell and cell.expires else None)
        elif sel.kind == "similarity" and sel.arg is not None:
            ctype = table.columns[sel.column]
            vec = _vector(ctype, row.get(sel.column))
            query = np.asarray(decode(ctype, _raw(sel.arg, ctype, values)), dtype=np.float64)
            out.append(None if vec is None else encode(FLOAT, similarity(sel.func, query, vec)))
    return out
