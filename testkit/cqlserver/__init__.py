"""An in-process fake Cassandra that speaks the CQL native protocol (v3/v4) to the real cassandra-driver.

Why it exists: no Cassandra can run here, and mocks of the driver would
prove nothing about prepared statements, token-aware routing, ``USING
TIMESTAMP`` reconciliation, paging or the driver's error handling.  This
server lets the real driver run over a real socket against Cassandra's
semantics, and lets tests make it fail the way Cassandra fails.

What it does:

* frames STARTUP, OPTIONS/SUPPORTED, READY, AUTHENTICATE/AUTH_RESPONSE/
  AUTH_SUCCESS (PasswordAuthenticator), QUERY, PREPARE, EXECUTE, BATCH and
  REGISTER; answers other protocol versions with the "unsupported protocol
  version" error the driver uses to downgrade;
* several fake nodes (one port each on 127.0.0.1, advertised through
  ``system.peers_v2``) with Murmur3 tokens, so the driver's token-aware
  policy routes for real, and ``stats.misrouted`` counts requests that
  reached a node that is not a replica;
* last-write-wins per cell by write timestamp, row and partition tombstones
  with timestamps, TTL (``advance_clock`` moves time), ANN ``ORDER BY ... ANN
  OF`` over an SAI-indexed vector, ``similarity_*`` functions, ``token()``
  restrictions, position-based paging, ``writetime()``/``ttl()``;
* Cassandra's refusals: filtering without ALLOW FILTERING or an index, ANN
  without an SAI index or LIMIT, missing keyspace/table, and, when started as
  a 4.x release, no vector type or SAI (so the blob fallback is exercised);
* faults switchable at runtime: ``faults.inject("write_timeout" |
  "read_timeout" | "unavailable" | "overloaded", times=, nodes=, tables=)``,
  ``faults.set_delay(s)``, ``faults.unreachable(nodes)`` and ``faults.clear()``;
  ``stats.max_in_flight`` records the most concurrent data requests;
* optional TLS (pass an ``ssl.SSLContext``).

Limits (it is a test double, not a database): one shared in-memory dataset
(replication, consistency levels and hinted handoff are not simulated; faults
stand in for them), no protocol v5 framing or compression, no LWT, counters,
UDTs, materialized views, secondary-index semantics beyond equality
filtering, GROUP BY, ORDER BY other than ANN, or named bind values; the
``system_schema`` tables other than ``keyspaces`` are empty and no EVENT
frames are pushed; a node made unreachable only loses its sockets (a real
RF=1 cluster would then answer Unavailable for its partitions); only the CQL
shapes this project sends are parsed (anything else is a SyntaxError).
"""

from .faults import FAULT_KINDS, Faults, Stats
from .server import CqlServer

__all__ = ["FAULT_KINDS", "CqlServer", "Faults", "Stats"]
