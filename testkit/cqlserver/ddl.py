"""Schema statements: keyspaces, tables and (SAI) indexes, with Cassandra's version limits.

Why it refuses vectors and SAI on a "4.x" server: the stores auto-detect
whether the cluster supports the 5.0 vector type; configuring the test
server with ``release_version="4.1.5"`` makes that fallback path run for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .framing import already_exists, invalid, syntax_error
from .statements import AlterTableAdd, CreateIndex, CreateKeyspace, CreateTable, Drop
from .storage import IndexDef, Keyspace, Table
from .system import is_system

if TYPE_CHECKING:
    from .executor import Database

_LOCATOR = "org.apache.cassandra.locator."
_SAI_CLASSES = ("storageattachedindex", "org.apache.cassandra.index.sai.storageattachedindex")
Change = tuple[str, str, str, str]


def apply_ddl(
    db: Database, stmt: CreateKeyspace | CreateTable | CreateIndex | Drop | AlterTableAdd, session_ks: str | None
) -> Change | None:
    """Apply a schema statement; returns the SCHEMA_CHANGE to report, or None for a no-op."""
    if isinstance(stmt, CreateKeyspace):
        return _create_keyspace(db, stmt)
    if isinstance(stmt, CreateTable):
        return _create_table(db, stmt, session_ks)
    if isinstance(stmt, CreateIndex):
        return _create_index(db, stmt, session_ks)
    if isinstance(stmt, AlterTableAdd):
        return _add_column(db, stmt, session_ks)
    return _drop(db, stmt, session_ks)


def _add_column(db: Database, stmt: AlterTableAdd, session_ks: str | None) -> Change:
    table = db.table_of(stmt.keyspace, stmt.table, session_ks)
    if stmt.column in table.columns:
        raise invalid(f"Invalid column name {stmt.column} because it conflicts with an existing column")
    if stmt.ctype.name == "vector" and not db.supports_vectors:
        raise syntax_error(f"line 1: no viable alternative at input 'vector' ({stmt.column})")
    table.columns[stmt.column] = stmt.ctype
    return ("UPDATED", "TABLE", table.keyspace, table.name)


def _create_keyspace(db: Database, stmt: CreateKeyspace) -> Change | None:
    if is_system(stmt.name):
        raise invalid(f"Cannot create keyspace {stmt.name}: system keyspace")
    if stmt.name in db.keyspaces:
        if stmt.if_not_exists:
            return None
        raise already_exists(stmt.name, "")
    replication = dict(stmt.replication)
    strategy = replication.get("class", "")
    if not strategy:
        raise invalid("Missing replication strategy class")
    if "." not in strategy:
        replication["class"] = _LOCATOR + strategy
    if replication["class"].endswith("NetworkTopologyStrategy"):
        for dc, rf in replication.items():
            if dc != "class" and not rf.isdigit():
                raise invalid(f"Replication factor must be numeric; found {rf}")
    db.keyspaces[stmt.name] = Keyspace(stmt.name, replication, stmt.durable_writes)
    return ("CREATED", "KEYSPACE", stmt.name, "")


def _create_table(db: Database, stmt: CreateTable, session_ks: str | None) -> Change | None:
    ks = db.keyspace_of(stmt.keyspace, session_ks)
    if stmt.table in ks.tables:
        if stmt.if_not_exists:
            return None
        raise already_exists(ks.name, stmt.table)
    for name, ctype in stmt.columns.items():
        if ctype.name == "vector" and not db.supports_vectors:
            raise syntax_error(f"line 1: no viable alternative at input 'vector' ({name})")
    for column in stmt.partition_key + stmt.clustering:
        if column not in stmt.columns:
            raise invalid(f"Unknown definition {column} referenced in PRIMARY KEY")
    ks.tables[stmt.table] = Table(
        ks.name, stmt.table, dict(stmt.columns), stmt.partition_key, stmt.clustering
    )
    return ("CREATED", "TABLE", ks.name, stmt.table)


def _create_index(db: Database, stmt: CreateIndex, session_ks: str | None) -> Change | None:
    table = db.table_of(stmt.keyspace, stmt.table, session_ks)
    if stmt.name in table.indexes:
        if stmt.if_not_exists:
            return None
        raise invalid(f"Index {stmt.name} already exists")
    if stmt.column not in table.columns:
        raise invalid(f"No column definition found for column {stmt.column}")
    is_sai = (stmt.custom_class or "").lower() in _SAI_CLASSES
    if stmt.custom_class and (not is_sai or not db.supports_vectors):
        raise invalid(f"Unable to find custom indexer class '{stmt.custom_class}'")
    if table.columns[stmt.column].name == "vector" and not is_sai:
        raise invalid("Vector indexes require 'StorageAttachedIndex'")
    table.indexes[stmt.name] = IndexDef(stmt.name, stmt.column, stmt.custom_class, dict(stmt.options))
    return ("UPDATED", "TABLE", table.keyspace, table.name)


def _drop(db: Database, stmt: Drop, session_ks: str | None) -> Change | None:
    if stmt.kind == "KEYSPACE":
        if stmt.name not in db.keyspaces:
            if stmt.if_exists:
                return None
            raise invalid(f"Keyspace {stmt.name} does not exist")
        del db.keyspaces[stmt.name]
        return ("DROPPED", "KEYSPACE", stmt.name, "")
    ks = db.keyspace_of(stmt.keyspace, session_ks)
    if stmt.kind == "TABLE":
        if stmt.name not in ks.tables:
            if stmt.if_exists:
                return None
            raise invalid(f"table {stmt.name} does not exist")
        del ks.tables[stmt.name]
        return ("DROPPED", "TABLE", ks.name, stmt.name)
    for table in ks.tables.values():
        if stmt.name in table.indexes:
            del table.indexes[stmt.name]
            return ("UPDATED", "TABLE", ks.name, table.name)
    if stmt.if_exists:
        return None
    raise invalid(f"Index {stmt.name} could not be found in any of the tables of keyspace {ks.name}")
