"""Statement trees the parser produces and the executor runs (only the shapes this project sends)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import CqlType


@dataclass(frozen=True, slots=True)
class Marker:
    index: int


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


Term = Marker | Literal


@dataclass(slots=True)
class Relation:
    """``column op value``; ``token`` marks ``token(col) op token(value)`` or ``token(col) op value``."""

    column: str
    op: str
    value: Term | list[Term]
    token: bool = False
    token_of_value: bool = False


@dataclass(slots=True)
class Selector:
    kind: str  # column | star | token | writetime | ttl | count | similarity
    column: str = ""
    arg: Term | None = None
    func: str = ""


@dataclass(slots=True)
class Select:
    keyspace: str | None
    table: str
    selectors: list[Selector]
    where: list[Relation]
    ann: tuple[str, Term] | None = None
    limit: Term | None = None
    allow_filtering: bool = False


@dataclass(slots=True)
class Insert:
    keyspace: str | None
    table: str
    columns: list[str]
    values: list[Term]
    timestamp: Term | None = None
    ttl: Term | None = None


@dataclass(slots=True)
class Update:
    keyspace: str | None
    table: str
    assignments: list[tuple[str, Term]]
    where: list[Relation]
    timestamp: Term | None = None
    ttl: Term | None = None


@dataclass(slots=True)
class Delete:
    keyspace: str | None
    table: str
    columns: list[str]
    where: list[Relation]
    timestamp: Term | None = None


@dataclass(slots=True)
class CreateKeyspace:
    name: str
    if_not_exists: bool
    replication: dict[str, str]
    durable_writes: bool = True


@dataclass(slots=True)
class CreateTable:
    keyspace: str | None
    table: str
    if_not_exists: bool
    columns: dict[str, CqlType]
    partition_key: list[str]
    clustering: list[str]


@dataclass(slots=True)
class CreateIndex:
    keyspace: str | None
    table: str
    name: str
    column: str
    if_not_exists: bool
    custom_class: str | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Drop:
    kind: str  # KEYSPACE | TABLE | INDEX
    keyspace: str | None
    name: str
    if_exists: bool


@dataclass(slots=True)
class AlterTableAdd:
    keyspace: str | None
    table: str
    column: str
    ctype: CqlType


@dataclass(slots=True)
class Use:
    keyspace: str


@dataclass(slots=True)
class Truncate:
    keyspace: str | None
    table: str


Statement = (
    Select | Insert | Update | Delete | CreateKeyspace | CreateTable | CreateIndex | Drop | AlterTableAdd | Use
    | Truncate
)
