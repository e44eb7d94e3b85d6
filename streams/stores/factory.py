"""Choose a profile store from ``settings.store_url``, and hold it open for one piece of work.

Why here and not in the backends: the backends never import each other, and
the worker, the commands and the tests all pick a backend the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from schemas.settings import Settings
from streams.stores.base import ProfileStore, StoreError


def open_store(settings: Settings) -> ProfileStore:
    """The store named by ``settings.store_url``, not opened: ``await store.open()`` (or ``init_schema``)."""
    scheme = urlsplit(settings.store_url).scheme
    if scheme == "sqlite":
        from streams.stores.sqlite import SqliteStore
        from streams.stores.sqlite_config import sqlite_target

        path, options = sqlite_target(settings)
        return SqliteStore(path, erasure_retention_days=settings.erasure_retention_days, **options)
    if scheme == "cassandra":
        from streams.stores.cassandra import CassandraStore
        from streams.stores.cassandra_config import cassandra_config

        return CassandraStore(cassandra_config(settings))
    raise StoreError(
        f"unsupported store_url scheme {scheme!r}: use sqlite:///path or cassandra://hosts/keyspace"
    )


@asynccontextmanager
async def opened_store(settings: Settings, init_dim: int | None = None) -> AsyncIterator[ProfileStore]:
    """The configured store, opened (or created with ``init_dim``), closed on the way out."""
    store = open_store(settings)
    try:
        if init_dim is None:
            await store.open()
        else:
            await store.init_schema(init_dim)
        yield store
    finally:  # also after a failed open: a half-made Cassandra session holds threads and sockets
        await store.close()
