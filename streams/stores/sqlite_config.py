"""The SQLite store's configuration: the path and options of a ``sqlite:///path?option=value`` URL.

Why apart from ``sqlite.py``: the factory and ``interest store`` read the
configuration without importing the store itself, as for Cassandra.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from schemas.settings import Settings
from streams.stores.base import StoreError

_SQLITE_OPTIONS: dict[str, Any] = {"busy_timeout_ms": int, "synchronous": str, "cache_mb": int}


def sqlite_target(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Path and options of ``sqlite:///relative/path.db?busy_timeout_ms=..&synchronous=..&cache_mb=..``
    (``sqlite:////abs/path``)."""
    raw = settings.sqlite_path()
    path, _, query = raw.partition("?")
    if not path:
        raise StoreError("sqlite store_url needs a path: sqlite:///data/profiles.db")
    options: dict[str, Any] = {}
    for key, values in parse_qs(query).items():
        if key not in _SQLITE_OPTIONS:
            raise StoreError(f"unknown sqlite store_url option {key!r}; known: {', '.join(_SQLITE_OPTIONS)}")
        try:
            options[key] = _SQLITE_OPTIONS[key](values[-1])
        except ValueError:
            raise StoreError(f"sqlite store_url option {key} must be an integer, not {values[-1]!r}") from None
    return path, options
