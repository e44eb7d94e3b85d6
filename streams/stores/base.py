"""The profile-store interface every backend implements.

Why one interface: the worker, the query CLI, the re-encoder and the tests
talk to SQLite (zero-setup default) and Cassandra (production) the same way,
so the store test-suite runs unchanged against both.

Guarantees every backend gives:

* ``write_batch`` is all-or-nothing from the caller's point of view: when it
  returns, every row in the batch is durable (Cassandra: acknowledged at the
  configured consistency); when it raises, the caller retries the whole batch.
  Retrying is harmless because every write is idempotent.
* Last-write-wins by the data-derived ``write_ts`` carried on each row, never
  by arrival order or the wall clock: a row is replaced only by a row whose
  ``write_ts`` is greater or equal.  Deletes carry a timestamp too and shadow
  writes with a smaller one.
* ``StoreUnavailable`` means "try again later" (cluster down, timeout,
  database locked); any other exception is a bug or bad data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas.sequence import ErasureMarker, IdentityLinkRecord, PersonState, Profile


class StoreError(Exception):
    """A store problem the operator must fix (schema missing, bad credentials)."""


class StoreUnavailable(StoreError):
    """A transient failure: the caller should back off and retry the same batch."""


@dataclass(slots=True)
class StoreBatch:
    """Everything one worker batch writes, applied together.

    ``removed_states`` lists ``(person_id, delete_ts)`` for anonymous people
    merged into a known person: their state and profile rows are deleted with
    a timestamp so an older replayed write cannot bring them back.
    """

    states: list[PersonState] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    links: list[IdentityLinkRecord] = field(default_factory=list)
    removed_states: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states) + len(self.profiles) + len(self.links) + len(self.removed_states)


@dataclass(slots=True)
class ForgetReceipt:
    """What ``forget`` removed, printed to the operator as proof of erasure."""

    person_id: str
    erased_ms: int
    profiles_deleted: int
    sequence_deleted: bool
    links_deleted: int


class ProfileStore(Protocol):
    """Async interface; blocking backends run their I/O in a thread."""

    url_scheme: str

    @property
    def vector_dim(self) -> int | None:
        """The vector size the store was initialised with, when it enforces one."""

    async def open(self) -> None:
        """Connect and check the schema exists (clear ``StoreError`` if not)."""

    async def close(self) -> None: ...

    async def init_schema(self, vector_dim: int) -> None:
        """Create keyspace/tables/indexes if missing (``interest store init``)."""

    # -- worker hot path -------------------------------------------------
    async def load_states(self, person_ids: Sequence[str]) -> dict[str, PersonState]:
        """States of the given people that exist (missing people are absent)."""

    async def load_erasures(self, person_ids: Sequence[str]) -> dict[str, ErasureMarker]:
        """Erasure markers of the given people still inside the retention window."""

    async def resolve_links(self, anon_person_ids: Sequence[str]) -> dict[str, str]:
        """Map anonymous person ids that were linked to their person id."""

    async def load_links(self, anon_person_ids: Sequence[str]) -> dict[str, IdentityLinkRecord]:
        """The newest stored link of each linked anonymous id, with its link time."""

    async def write_batch(self, batch: StoreBatch) -> None:
        """Apply the batch idempotently (see module docstring)."""

    # -- queries ---------------------------------------------------------
    async def get_profile(self, person_id: str, model_version: str) -> Profile | None: ...

    async def get_profiles(self, person_id: str) -> list[Profile]:
        """Every version's row of one person, newest ``write_ts`` first."""

    async def nearest_people(
        self, vector: np.ndarray, model_version: str, k: int, exclude: Sequence[str] = ()
    ) -> list[tuple[str, float]]:
        """Top-k people by dot product (vectors are L2-normalised => cosine)."""

    async def iter_states(self, after: str | None, limit: int) -> list[PersonState]:
        """A page of states ordered by person id, starting after ``after``.

        Used by the re-encoder and the trainer to scan every stored sequence
        with resumable progress.
        """

    async def count_profiles(self, model_version: str) -> int: ...

    async def count_states(self) -> int: ...

    # -- erasure ---------------------------------------------------------
    async def forget(self, person_id: str, erased_ms: int) -> ForgetReceipt:
        """Delete every profile row, the sequence and identity links of a person
        and record an erasure marker at ``erased_ms``."""


async def state_pages(store: ProfileStore, page_size: int = 1000,
                      after: str | None = None) -> AsyncIterator[list[PersonState]]:
    """Every stored sequence state in person-id order, one page at a time (the one pagination loop)."""
    while page := await store.iter_states(after, page_size):
        yield page
        after = page[-1].person_id
