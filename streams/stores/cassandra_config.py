"""Cassandra's configuration and DDL: ``CassandraConfig`` (settings plus URL options), the driver
``Cluster`` (routing, consistency, auth, TLS), and the CQL rendered from ``cql/`` beside this file
(DDL for ``interest store init``, the store's named statements).

Why URL options override settings: one URL in one environment variable is
the handiest way to point a tool at another cluster or tune one knob
(``?consistency=ONE`` for a bulk scan, ``?vector_mode=blob`` on 4.x) without
touching the rest of the configuration.  Unknown options are rejected, like
unknown ``INTEREST_*`` variables, so a typo cannot be silently ignored.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas.settings import Settings
from streams.stores.base import StoreError

CQL_DIR = Path(__file__).parent / "cql"

_BOOL = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off"), False)
_CONSISTENCY = ("ONE", "LOCAL_ONE", "LOCAL_QUORUM", "QUORUM", "EACH_QUORUM", "ALL")
# URL option -> (CassandraConfig field, parser)
_CASSANDRA_OPTIONS: dict[str, tuple[str, Any]] = {
    "dc": ("local_dc", str),
    "consistency": ("consistency", str.upper),
    "max_in_flight": ("max_in_flight", int),
    "replication": ("replication", str),
    "request_timeout_s": ("request_timeout_s", float),
    "connect_timeout_s": ("connect_timeout_s", float),
    "vector_mode": ("vector_mode", str.lower),
    "protocol_version": ("protocol_version", int),
    "fetch_size": ("fetch_size", int),
    "reconnect_base_s": ("reconnect_base_s", float),
    "reconnect_max_s": ("reconnect_max_s", float),
    "tls": ("tls", lambda v: _BOOL[v.lower()]),
    "tls_ca_file": ("tls_ca_file", str),
    "tls_check_hostname": ("tls_check_hostname", lambda v: _BOOL[v.lower()]),
}
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class CassandraConfig:
    """Everything the store needs, resolved from settings and the URL by ``cassandra_config``."""

    hosts: list[str]
    port: int = 9042
    keyspace: str = "interest"
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_check_hostname: bool = True
    max_in_flight: int = 128
    replication: str = "datacenter1:3"
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    erasure_retention_days: int = 30
    vector_mode: str = "auto"  # auto | native | blob
    protocol_version: int | None = None
    fetch_size: int = 5000
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 60.0

    @property
    def where(self) -> str:
        return f"{','.join(self.hosts)}:{self.port}"


def replication_map(spec: str) -> str:
    """``"dc1:3,dc2:2"`` -> the CQL map of a NetworkTopologyStrategy keyspace."""
    parts = []
    for item in spec.split(","):
        dc, _, rf = item.strip().rpartition(":")
        if not dc or not rf.isdigit():
            raise StoreError(f"bad replication {spec!r}: expected dc:rf[,dc:rf], e.g. datacenter1:3")
        parts.append(f"'{dc}': {int(rf)}")
    return "{'class': 'NetworkTopologyStrategy', " + ", ".join(parts) + "}"


def render_cql(keyspace: str, replication: str, dim: int, native: bool) -> list[str]:
    """The DDL of ``cql/0*.cql`` for this keyspace, dimension and vector mode, in order."""
    values = {
        "keyspace": keyspace,
        "replication": replication_map(replication),
        "vector_type": f"vector<float, {dim}>" if native else "blob",
    }
    out: list[str] = []
    for path in sorted(CQL_DIR.glob("[0-9]*.cql")):
        if "sai" in path.name and not native:
            continue
        text = string.Template(path.read_text()).substitute(values)
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        out.extend(s.strip() for s in body.split(";") if s.strip())
    return out


def load_queries(keyspace: str) -> dict[str, str]:
    """The named statements of ``cql/queries.cql`` (``-- name: X`` starts statement X)."""
    text = string.Template((CQL_DIR / "queries.cql").read_text()).substitute(keyspace=keyspace)
    queries: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("-- name:"):
            name = line.split(":", 1)[1].strip()
            queries[name] = ""
        elif name and line.strip() and not line.lstrip().startswith("--"):
            queries[name] = f"{queries[name]} {line.strip()}".strip()
    return {key: value.rstrip(";") for key, value in queries.items()}


def build_cluster(cfg: CassandraConfig) -> Any:
    """A driver ``Cluster``, not connected: token-aware DC-aware routing, consistency, auth, TLS, timeouts."""
    import ssl

    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
        consistency_level=ConsistencyLevel.name_to_value[cfg.consistency],
        request_timeout=cfg.request_timeout_s,
        row_factory=tuple_factory,
    )
    kwargs: dict[str, Any] = {}
    if cfg.username and cfg.password:
        kwargs["auth_provider"] = PlainTextAuthProvider(cfg.username, cfg.password)
    if cfg.tls or cfg.tls_ca_file:
        context = ssl.create_default_context(cafile=cfg.tls_ca_file)
        context.check_hostname = cfg.tls_check_hostname
        kwargs["ssl_context"] = context
    if cfg.protocol_version:
        kwargs["protocol_version"] = cfg.protocol_version
    return Cluster(
        cfg.hosts,
        port=cfg.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        reconnection_policy=ExponentialReconnectionPolicy(cfg.reconnect_base_s, cfg.reconnect_max_s),
        connect_timeout=cfg.connect_timeout_s,
        control_connection_timeout=cfg.request_timeout_s,
        **kwargs,
    )


def cassandra_config(settings: Settings) -> CassandraConfig:
    """Settings' ``cassandra_*`` fields, overridden by the options of the ``cassandra://`` URL."""
    if "@" in urlsplit(settings.store_url).netloc:
        raise StoreError(
            "put Cassandra credentials in INTEREST_CASSANDRA_USERNAME/PASSWORD, not in store_url"
        )
    hosts, port, keyspace, options = settings.cassandra_target()
    if not _KEYSPACE.match(keyspace):
        raise StoreError(f"bad keyspace name {keyspace!r}: letters, digits and _, starting with a letter")
    fields: dict[str, Any] = {
        "hosts": hosts,
        "port": port,
        "keyspace": keyspace,
        "local_dc": settings.cassandra_local_dc,
        "consistency": settings.cassandra_consistency,
        "username": settings.cassandra_username,
        "password": settings.cassandra_password.get_secret_value() if settings.cassandra_password else None,
        "tls_ca_file": settings.cassandra_tls_ca_file,
        "tls_check_hostname": settings.cassandra_tls_check_hostname,
        "max_in_flight": settings.cassandra_max_in_flight,
        "replication": settings.cassandra_replication,
        "request_timeout_s": settings.cassandra_request_timeout_s,
        "erasure_retention_days": settings.erasure_retention_days,
    }
    for key, value in options.items():
        if key not in _CASSANDRA_OPTIONS:
            raise StoreError(
                f"unknown cassandra store_url option {key!r}; known: {', '.join(_CASSANDRA_OPTIONS)}"
            )
        name, parse = _CASSANDRA_OPTIONS[key]
        try:
            fields[name] = parse(value)
        except (ValueError, KeyError) as exc:
            raise StoreError(f"bad value {value!r} for store_url option {key}") from exc
    if fields["consistency"] not in _CONSISTENCY:
        raise StoreError(f"consistency must be one of {', '.join(_CONSISTENCY)}")
    if fields.get("vector_mode", "auto") not in ("auto", "native", "blob"):
        raise StoreError("vector_mode must be auto, native or blob")
    if fields["max_in_flight"] < 1:
        raise StoreError("max_in_flight must be at least 1")
    return CassandraConfig(**fields)
