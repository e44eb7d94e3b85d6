"""RESULT message bodies: Void, Rows, Set_keyspace, Prepared, Schema_change (spec section 4.2.5)."""

from __future__ import annotations

from .codec import type_option
from .executor import Prepared, Result, Rows, SchemaChange, SetKeyspace, Void
from .framing import Writer
from .system import ColumnSpec

_GLOBAL_SPEC, _HAS_MORE_PAGES, _NO_METADATA = 0x01, 0x02, 0x04


def _metadata(
    w: Writer,
    specs: list[ColumnSpec],
    *,
    pk_indexes: list[int] | None = None,
    paging_state: bytes | None = None,
    no_metadata: bool = False,
) -> None:
    tables = {(s[0], s[1]) for s in specs}
    global_spec = len(tables) == 1
    flags = (_GLOBAL_SPEC if global_spec else 0) | (_HAS_MORE_PAGES if paging_state else 0)
    flags |= _NO_METADATA if no_metadata else 0
    w.int_(flags).int_(len(specs))
    if pk_indexes is not None:
        w.int_(len(pk_indexes))
        for index in pk_indexes:
            w.short(index)
    if paging_state:
        w.bytes_(paging_state)
    if no_metadata:
        return
    if global_spec:
        ks, table = next(iter(tables))
        w.string(ks).string(table)
    for ks, table, name, ctype in specs:
        if not global_spec:
            w.string(ks).string(table)
        w.string(name).raw(type_option(ctype))


def encode_result(result: Result, skip_metadata: bool = False) -> bytes:
    w = Writer()
    if isinstance(result, Void):
        w.int_(0x0001)
    elif isinstance(result, Rows):
        w.int_(0x0002)
        _metadata(w, result.specs, paging_state=result.paging_state, no_metadata=skip_metadata)
        w.int_(len(result.rows))
        for row in result.rows:
            for value in row:
                w.bytes_(value)
    elif isinstance(result, SetKeyspace):
        w.int_(0x0003).string(result.keyspace)
    elif isinstance(result, SchemaChange):
        w.int_(0x0005).string(result.change).string(result.target).string(result.keyspace)
        if result.target != "KEYSPACE":
            w.string(result.name)
    return w.done()


def encode_prepared(prepared: Prepared) -> bytes:
    w = Writer().int_(0x0004).short_bytes(prepared.query_id)
    _metadata(w, prepared.bind_specs, pk_indexes=prepared.pk_indexes)
    _metadata(w, prepared.result_specs, no_metadata=not prepared.result_specs)
    return w.done()
