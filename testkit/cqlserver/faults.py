"""Runtime fault injection and request statistics of the fake cluster.

Why counters and faults live apart from the protocol code: tests flip faults
from their own thread while the server thread serves requests, so this is
the one piece of shared state, guarded by a lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .executor import Target
from .framing import CqlError, ErrorCode, read_timeout, unavailable, write_timeout

if TYPE_CHECKING:
    from .server import CqlServer

FAULT_KINDS = ("write_timeout", "read_timeout", "unavailable", "overloaded")


@dataclass(slots=True)
class _Rule:
    kind: str
    remaining: int | None
    nodes: frozenset[int] | None
    tables: frozenset[str] | None


@dataclass
class Stats:
    """Counters of data requests (user keyspaces only; the driver's system queries are not counted)."""

    requests: int = 0
    reads: int = 0
    writes: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    misrouted: int = 0
    faults_raised: int = 0
    by_node: Counter[int] = field(default_factory=Counter)

    def reset(self) -> None:
        self.requests = self.reads = self.writes = self.max_in_flight = self.misrouted = 0
        self.faults_raised = 0
        self.by_node.clear()


class Faults:
    """Thread-safe switchboard that tests flip while the server runs."""

    def __init__(self, server: CqlServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.delay_s = 0.0
        self.down: set[int] = set()

    def inject(
        self,
        kind: str,
        *,
        times: int | None = None,
        nodes: set[int] | None = None,
        tables: set[str] | None = None,
    ) -> None:
        """Answer matching data requests with ``kind`` (``times`` requests, or until ``clear``)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        with self._lock:
            self._rules.append(
                _Rule(
                    kind,
                    times,
                    frozenset(nodes) if nodes is not None else None,
                    frozenset(tables) if tables is not None else None,
                )
            )

    def set_delay(self, seconds: float) -> None:
        """Hold every data request this long before answering (lets concurrency build up)."""
        self.delay_s = seconds

    def unreachable(self, nodes: set[int] | None = None) -> None:
        """Drop every connection to ``nodes`` (default: all) and close new ones at once."""
        targets = set(range(len(self._server.nodes))) if nodes is None else set(nodes)
        with self._lock:
            self.down |= targets
        self._server.call(self._server.drop_connections, targets)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.down.clear()
        self.delay_s = 0.0

    def take(self, target: Target, node: int) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind == "write_timeout" and not target.is_write:
                    continue
                if rule.kind == "read_timeout" and target.is_write:
                    continue
                if rule.nodes is not None and node not in rule.nodes:
                    continue
                if rule.tables is not None and target.table not in rule.tables:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule.kind
        return None


def fault_error(kind: str, consistency: int, target: Target) -> CqlError:
    """The error frame a real coordinator sends for ``kind`` (what the driver's retry policy sees)."""
    if kind == "write_timeout":
        return write_timeout(consistency, 0, 2, "SIMPLE")
    if kind == "read_timeout":
        return read_timeout(consistency, 0, 2)
    if kind == "unavailable":
        return unavailable(consistency, 2, 1)
    return CqlError(ErrorCode.OVERLOADED, f"Server is in overloaded state ({target.table})")
