"""Pytest fixtures around ``CqlServer`` for any test that needs "a Cassandra".

Use them from a conftest with ``from testkit.cqlserver.fixtures import cql_server, cql_faults  # noqa: F401``
(or ``pytest_plugins = ["testkit.cqlserver.fixtures"]`` in the top-level ``tests/conftest.py``).

* ``cql_server`` (session): a 3-node fake cluster on 127.0.0.1 with
  PasswordAuthenticator (user ``CQL_USER`` / ``CQL_PASSWORD``); build store
  URLs with ``cql_server.url(keyspace, protocol_version=4, ...)`` and give
  every test its own keyspace (``unique_keyspace()``), so tests stay independent.
* ``cql_faults``: the server's fault switchboard, cleared (and the statistics
  reset) before and after the test, so an injected fault never leaks.
* ``cql_server_4x`` (session): one node posing as Cassandra 4.1, no auth: no
  vector type and no SAI, for the blob-fallback path.

Faults: ``cql_faults.inject("write_timeout" | "read_timeout" | "unavailable" |
"overloaded", times=None, nodes=None, tables=None)``, ``set_delay(seconds)``,
``unreachable(nodes=None)``, ``clear()``; counters in ``cql_server.stats``
(``max_in_flight``, ``misrouted``, ``by_node``, ``requests``...);
``cql_server.advance_clock(seconds)`` expires TTLs without sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .server import CqlServer, Faults

CQL_USER = "cassandra"
CQL_PASSWORD = "cassandra"


def unique_keyspace(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def cql_server() -> Iterator[CqlServer]:
    server = CqlServer(nodes=3, users={CQL_USER: CQL_PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture
def cql_faults(cql_server: CqlServer) -> Iterator[Faults]:
    cql_server.faults.clear()
    cql_server.stats.reset()
    yield cql_server.faults
    cql_server.faults.clear()


@pytest.fixture(scope="session")
def cql_server_4x() -> Iterator[CqlServer]:
    """A one-node "Cassandra 4.1" without auth: no vector type, no SAI (the blob fallback path)."""
    server = CqlServer(nodes=1, release_version="4.1.5").start()
    yield server
    server.stop()
