"""One typed settings object for every part of the system.

Every field is a declaration with a type, a default and a description, read
from ``INTEREST_<FIELD>`` environment variables (or keyword arguments).  Unknown
``INTEREST_*`` variables are rejected up front, so a typo such as
``INTEREST_BATCH_SIZ`` fails at start-up instead of being silently ignored.
Secrets are ``SecretStr`` and print as ``**********``.
"""

from __future__ import annotations

import os
import re
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "INTEREST_"
# Variables the test-suite reads itself; not settings of the system.
_NOT_SETTINGS = ("INTEREST_TEST_",)


class KafkaSecurity(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class Settings(BaseSettings):
    """Effective configuration; ``interest config`` prints it with secrets masked."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # -- Kafka -----------------------------------------------------------
    broker_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers: kafka://host1:9092;host2:9092 or host1:9092,host2:9092",
    )
    platforms: list[str] = Field(
        default_factory=lambda: ["web", "app", "mini", "tv"],
        description="Platforms whose events.<platform>.<action> topics the worker consumes",
    )
    topics: list[str] = Field(
        default_factory=list,
        description="Explicit raw-event topic list; empty means every events.<platform>.<action>",
    )
    identity_topic: str = "identity.links"
    dlq_topic: str = "interest.dlq"
    models_topic: str = "interest.models"
    person_topic: str = Field("interest.by_person", description="Internal topic keyed by person")
    person_partitions: int = Field(8, ge=1, le=1024, description="Partitions of the person topic")
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions for raw topics we create")
    person_topic_retention_days: float = Field(
        7, ge=1 / 24, le=3650,
        description="retention.ms of the person topic when the worker creates it: how long the update stage may be "
        "held (a store outage) before envelopes whose raw offsets are committed expire. Explicit, not the "
        "cluster's default, which may be hours",
    )
    dlq_retention_days: float = Field(
        30, ge=1 / 24, le=3650,
        description="retention.ms of the DLQ topic when the worker creates it (an hour at least)",
    )
    kafka_topic_replication: int = Field(
        -1, ge=-1, le=32,
        description="Replicas of each topic the worker creates (raw, identity, person, DLQ, models); -1: the "
        "cluster's default.replication.factor (Kafka >= 2.4), as Kafka Streams does. The person topic holds "
        "events whose raw offsets are already committed, so on a real cluster it needs the usual 3 copies",
    )
    kafka_security_protocol: KafkaSecurity = KafkaSecurity.PLAINTEXT
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_check_hostname: bool = True
    session_timeout_s: float = Field(
        10.0, gt=0, description="Consumer-group session timeout; the join waits about half of it"
    )
    heartbeat_interval_s: float = Field(1.0, gt=0)
    kafka_bootstrap_timeout_ms: int = Field(
        10_000, ge=100, le=600_000,
        description="How long a tool (producer, admin, DLQ reader) tries to reach the first broker before it gives up",
    )
    kafka_fetch_max_wait_ms: int = Field(
        50, ge=1, le=30_000,
        description="Longest a fetch waits for data; brokers that do not answer early (Tansu) add this to latency",
    )

    # -- Store -----------------------------------------------------------
    store_url: str = Field(
        "sqlite:///data/profiles.db",
        description="sqlite:///path or cassandra://host1,host2:9042/keyspace?dc=DC&consistency=LOCAL_QUORUM",
    )
    cassandra_consistency: Literal["ONE", "LOCAL_ONE", "LOCAL_QUORUM", "QUORUM", "EACH_QUORUM", "ALL"] = (
        "LOCAL_QUORUM"
    )
    cassandra_local_dc: str | None = None
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    cassandra_tls_ca_file: str | None = None
    cassandra_tls_check_hostname: bool = True
    cassandra_max_in_flight: int = Field(128, ge=1, le=10_000, description="Concurrent async requests")
    cassandra_replication: str = Field(
        "datacenter1:3", description="NetworkTopologyStrategy replication, dc:rf[,dc:rf]"
    )
    cassandra_request_timeout_s: float = Field(10.0, gt=0)
    erasure_retention_days: int = Field(30, ge=1)

    # -- Model -----------------------------------------------------------
    registry: str = Field("data/registry", description="Model registry directory")
    model_version: str | None = Field(None, description="Pin a version; default: the promoted one")
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    model_check_interval_s: float = Field(
        30.0, gt=0, description="Registry re-check period (announcements on models_topic act at once)"
    )
    quality_gate_tolerance: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Publish a candidate at most this much worse (valid NDCG@10) than the promoted version",
    )
    platforms_served: Annotated[list[str], NoDecode] = Field(  # "tv,app" or a JSON list
        default_factory=list,
        description="Platforms whose promoted fine-tuned version workers serve beside the shared one (a row per "
        "person and version); the periodic trainer refreshes them after the shared model. Empty: shared only",
    )

    # -- Worker ----------------------------------------------------------
    app_id: str = "interest-worker"
    worker_stages: Literal["all", "ingest", "update"] = Field(
        "all",
        description="Stages this process runs: both on one event loop, or one of them (`interest worker --split` "
        "runs one process each; the ingest process's consumer group is APP_ID-ingest)",
    )
    ingest_reader: Literal["batch", "faust"] = Field(
        "batch",
        description="How the ingest stage reads the raw topics: `batch`, an aiokafka consumer handing over whole "
        "fetched batches (group APP_ID-ingest; streams/raw_reader.py), or `faust`, a Faust agent (Faust's "
        "per-message events and acks: about half the worker's CPU at 2000 single-event messages/s)",
    )
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, le=100,
        description="sys.setswitchinterval of a worker process: how long a thread (encode, store) keeps the GIL "
        "before the event loop gets it back; Python's default is 5",
    )
    malloc_arena_max: int = Field(
        2, ge=0, le=1024,
        description="glibc malloc arenas of a worker process (M_ARENA_MAX; 0: glibc's default, 8 per core): "
        "each thread that allocates (encode lanes, store, fetch) otherwise gets arenas of its own",
    )
    gc_thresholds: tuple[int, int, int] = Field(
        (50_000, 50, 1000),
        description="gc.set_threshold of a worker process (JSON list); Python's default (700, 10, 10) stops the "
        "event loop for a full collection every few seconds under load",
    )
    data_dir: str = "data"
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "0.0.0.0"
    batch_size: int = Field(2000, ge=1, le=1_000_000, description="Max messages per micro-batch")
    batch_wait_ms: int = Field(50, ge=1, le=60_000, description="Max wait to fill an ingest micro-batch")
    update_batch_wait_ms: int = Field(
        3, ge=1, le=60_000,
        description="Max wait to fill an update batch once the last one is done: the person topic carries "
        "envelopes the ingest stage already batched, and events wait for the running batch anyway, so a "
        "longer wait only adds latency (a busy stage still takes big batches)",
    )
    update_batch_envelopes: int = Field(
        128, ge=1, le=10_000,
        description="Person-topic messages per update batch (each <= 500 records): bounds a catch-up's memory",
    )
    seq_len: int = Field(50, ge=1, le=999, description="Events kept per person")
    interests_max: int = Field(
        3, ge=0, le=10,
        description="Interests kept per person beside the vector (clusters of their recent items; 0: none)",
    )
    retry_attempts: int = Field(3, ge=0, le=100, description="Retries of a failing batch before DLQ")
    retry_backoff_ms: int = Field(200, ge=1)
    retry_backoff_max_ms: int = Field(10_000, ge=1)
    stop_grace_s: float = Field(
        20.0, gt=0, le=3600,
        description="After SIGTERM, how long a failing store or broker call is retried before the worker exits "
        "without committing (keep it below the pod's termination grace period)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("kafka_topic_replication")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value == 0:
            raise ValueError("kafka_topic_replication must be -1 (the cluster's default) or at least 1")
        return value

    @field_validator("platforms", "topics", "platforms_served", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("platforms_served", mode="before")
    @classmethod
    def _served_json(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("["):
            import json

            return json.loads(value)
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _check_gc(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(v < 1 for v in value):
            raise ValueError("gc_thresholds must be three positive integers, e.g. [50000, 50, 1000]")
        return value

    @field_validator("platforms_served")
    @classmethod
    def _check_served(cls, value: list[str]) -> list[str]:
        # The names become registry file names (PROMOTED.<platform>): the registry's own rule.
        bad = [p for p in value if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", p)]
        if bad:
            raise ValueError(f"platforms_served: invalid platform name(s) {bad} (lower-case letters, digits, _, -)")
        return list(dict.fromkeys(value))

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("sqlite", "cassandra"):
            raise ValueError(f"store_url must start with sqlite:/// or cassandra://, got scheme {scheme!r}")
        if scheme == "cassandra":
            parts = urlsplit(value)
            if not parts.netloc:
                raise ValueError("cassandra store_url needs hosts: cassandra://host1,host2:9042/keyspace")
            if not parts.path.strip("/"):
                raise ValueError("cassandra store_url needs a keyspace: cassandra://host:9042/keyspace")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        proto = self.kafka_security_protocol
        if proto in (KafkaSecurity.SASL_PLAINTEXT, KafkaSecurity.SASL_SSL) and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol={proto.value} needs INTEREST_KAFKA_SASL_USERNAME "
                "and INTEREST_KAFKA_SASL_PASSWORD"
            )
        if bool(self.cassandra_username) != bool(self.cassandra_password):
            raise ValueError("set both INTEREST_CASSANDRA_USERNAME and INTEREST_CASSANDRA_PASSWORD, or neither")
        return self

    # -- derived ---------------------------------------------------------
    def raw_topics(self) -> list[str]:
        """Raw-event topics the worker consumes."""
        if self.topics:
            return list(self.topics)
        from schemas.topics import raw_topics

        return raw_topics(self.platforms)

    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for kafka-python / aiokafka."""
        raw = self.broker_url
        for prefix in ("kafka://", "aiokafka://"):
            if raw.startswith(prefix):
                raw = raw[len(prefix) :]
        return [h.strip() for h in raw.replace(";", ",").split(",") if h.strip()]

    def cassandra_target(self) -> tuple[list[str], int, str, dict[str, str]]:
        """Hosts, port, keyspace and query options from a ``cassandra://`` URL."""
        parts = urlsplit(self.store_url)
        hosts_port = parts.netloc.rsplit("@", 1)[-1]
        port = 9042
        hosts = []
        for host in hosts_port.split(","):
            if ":" in host:
                host, port_s = host.rsplit(":", 1)
                port = int(port_s)
            hosts.append(host)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return hosts, port, parts.path.strip("/"), options

    def sqlite_path(self) -> str:
        """Filesystem path from a ``sqlite:///path`` URL (relative paths allowed)."""
        return self.store_url[len("sqlite:///") :] if self.store_url.startswith("sqlite:///") else ""

    def to_env(self) -> dict[str, str]:
        """``INTEREST_*`` variables that reproduce these settings in a child process (secrets included)."""
        import json

        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Enum):
                value = value.value
            env[ENV_PREFIX + name.upper()] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
        return env

    def child_env(self) -> dict[str, str]:
        """This process's environment with every ``INTEREST_*`` setting replaced by these settings (for a child).

        The ``INTEREST_TEST_*`` hooks are not settings and pass through: a fault armed for a worker reaches
        the child whose stage has the crash point.
        """
        import os

        def kept(key: str) -> bool:
            return not key.startswith(ENV_PREFIX) or key.startswith(_NOT_SETTINGS)

        return {k: v for k, v in os.environ.items() if kept(k)} | self.to_env()

    @property
    def runs_ingest(self) -> bool:
        """This process runs the ingest stage (``worker_stages`` all or ingest)."""
        return self.worker_stages != "update"

    @property
    def faust_reads_raw(self) -> bool:
        """A Faust agent of this process reads the raw topics (``ingest_reader=faust``); else the batch reader does."""
        return self.runs_ingest and self.ingest_reader == "faust"

    @property
    def runs_update(self) -> bool:
        """This process runs the update stage, and so needs the store and the model."""
        return self.worker_stages != "ingest"

    def masked(self) -> dict[str, Any]:
        """Settings as JSON-able data with every secret masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Enum):
                value = value.value
            out[name] = value
        return out


def unknown_env_keys(environ: dict[str, str] | None = None) -> list[str]:
    """``INTEREST_*`` variables that name no setting (typos)."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        key
        for key in env
        if key.upper().startswith(ENV_PREFIX)
        and key.upper() not in known
        and not key.upper().startswith(_NOT_SETTINGS)
    )


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, rejecting unknown ``INTEREST_*`` keys."""
    unknown = unknown_env_keys()
    if unknown:
        raise ValueError(
            "unknown settings in the environment: " + ", ".join(unknown) + " (see `interest config`)"
        )
    return Settings(**overrides)
