"""Kafka client options from ``Settings``: one place for security and addresses.

kafka-python (producer CLI, admin, tests) and Faust (the worker) both take
their TLS/SASL options from here, so a setting means the same for both.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from schemas.settings import KafkaSecurity, Settings

log = logging.getLogger("interest.kafka")
DESCRIBE_WAIT_S = 10.0  # how long a just-made person topic may take to show in the metadata answered


class KafkaConfigError(ValueError):
    """Kafka settings that cannot work: security (missing CA file, bad key pair), topics the cluster refuses."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for SSL/SASL_SSL, verifying the broker against the CA file."""
    if settings.kafka_security_protocol not in (KafkaSecurity.SSL, KafkaSecurity.SASL_SSL):
        return None
    try:
        ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaConfigError(
            f"cannot load Kafka TLS files (INTEREST_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE): {exc}"
        ) from exc
    ctx.check_hostname = settings.kafka_ssl_check_hostname
    return ctx


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (KafkaProducer, KafkaConsumer, admin)."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers(),
        "security_protocol": settings.kafka_security_protocol.value,
        "bootstrap_timeout_ms": settings.kafka_bootstrap_timeout_ms,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        opts["ssl_context"] = ctx
    if settings.kafka_security_protocol in (KafkaSecurity.SASL_PLAINTEXT, KafkaSecurity.SASL_SSL):
        assert settings.kafka_sasl_password is not None
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def kafka_producer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python producer with the security settings; ``acks=all``: a send is durable once it returns."""
    from kafka import KafkaProducer

    return KafkaProducer(**{**kafka_python_options(settings), "acks": "all", **overrides})


def kafka_consumer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python consumer with the security settings; no auto-commit: callers commit what they did."""
    from kafka import KafkaConsumer

    return KafkaConsumer(**{**kafka_python_options(settings), "enable_auto_commit": False, **overrides})


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for the Faust app, or None for PLAINTEXT."""
    import faust

    proto = settings.kafka_security_protocol
    ctx = ssl_context(settings)
    if proto == KafkaSecurity.PLAINTEXT:
        return None
    if proto == KafkaSecurity.SSL:
        return faust.SSLCredentials(ctx)
    assert settings.kafka_sasl_password is not None
    mechanism = settings.kafka_sasl_mechanism
    password = settings.kafka_sasl_password.get_secret_value()
    if mechanism == "PLAIN":
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=password, ssl_context=ctx, mechanism="PLAIN"
        )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=password, ssl_context=ctx, mechanism=mechanism
    )


def ensure_topics(settings: Settings, topics: dict[str, int]) -> None:
    """Create missing topics with the given partition counts, ``kafka_topic_replication`` replicas and
    ``topic_configs`` (idempotent; a topic that exists is left as it is).

    Raises ``KafkaConfigError`` when the cluster refuses a topic for a reason no retry fixes (replicas,
    policy, authorisation: named with the setting to change), and when the person topic exists with a
    partition count other than ``person_partitions``.  Why that check: the ingest stage picks each
    person's partition itself (a hash modulo ``person_partitions``), so a topic with fewer partitions
    would hold the stage on every produce to a partition it lacks, and a changed count would hand
    people to other partitions, and so other owners, than the events already in flight.  The raw
    topics may have any count.  The check also runs when another process created the topic between
    this one's listing and its request (two workers starting at once, ``--split``'s two stages).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import IncompatibleBrokerVersion

    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="interest-admin")
    try:
        existing = set(admin.list_topics())
        replicas, configs = settings.kafka_topic_replication, topic_configs(settings)
        missing = [NewTopic(name, parts, replicas, topic_configs=configs.get(name, {}))
                   for name, parts in topics.items() if name not in existing]
        if missing:
            try:
                answer = admin.create_topics(missing, raise_errors=False)
            except IncompatibleBrokerVersion as exc:  # -1 (the cluster's default) needs CreateTopics v4+
                raise KafkaConfigError(f"cannot create topics: {exc}; set INTEREST_KAFKA_TOPIC_REPLICATION to "
                                       "a replica count (this broker predates Kafka 2.4's defaults)") from exc
            existing |= _created_by_others(answer, settings)
        person = settings.person_topic
        if person in topics and person in existing:
            _check_person_topic(admin, settings, topics[person])
    finally:
        admin.close()


def _created_by_others(answer: dict[str, Any], settings: Settings) -> set[str]:
    """The topics a CreateTopics answer says exist already; raises for any other refusal.

    Why not kafka-python's ``raise_errors``: it raises the first topic's error only, so an "already
    exists" (another process won the race) would hide a real refusal of the next topic.
    """
    from kafka.errors import TopicAlreadyExistsError, for_code

    there: set[str] = set()
    for topic in answer.get("topics", []):
        code = topic.get("error_code") or 0
        if code == TopicAlreadyExistsError.errno:
            there.add(topic["name"])
        elif code:
            error = for_code(code)
            detail = f"{error.__name__}: {topic.get('error_message') or error.description}"
            if error.retriable:  # a timeout, a throttled request: the caller's restart tries again
                raise error(f"creating topic {topic['name']!r}: {detail}")
            fix = (f"replicas asked: INTEREST_KAFKA_TOPIC_REPLICATION={settings.kafka_topic_replication}"
                   if error.__name__ == "InvalidReplicationFactorError" else "the cluster's policy or ACLs")
            raise KafkaConfigError(f"the cluster refused to create topic {topic['name']!r} ({detail}); check "
                                   f"{fix}, or create the topic yourself")
    return there


def _check_person_topic(admin: Any, settings: Settings, partitions: int) -> None:
    """The existing person topic has ``partitions`` partitions (else ``KafkaConfigError``); fewer replicas
    than asked are logged, since the worker does not change a topic that exists."""
    from kafka.errors import for_code

    person = settings.person_topic
    deadline = time.monotonic() + DESCRIBE_WAIT_S
    while True:  # a topic another process has just made may not be in every broker's metadata yet
        described = admin.describe_topics([person])[0]
        error = for_code(described["error_code"]) if described.get("error_code") else None
        if error is None:
            break
        if not error.retriable:
            raise KafkaConfigError(f"cannot describe the person topic {person!r}: {error.__name__} "
                                   f"({error.description})")
        if time.monotonic() > deadline:
            raise error(f"describing the person topic {person!r} for {DESCRIBE_WAIT_S:.0f}s: {error.__name__}")
        time.sleep(0.2)
    found = len(described.get("partitions") or [])
    if found != partitions:
        raise KafkaConfigError(
            f"the person topic {person!r} has {found} partitions but INTEREST_PERSON_PARTITIONS is "
            f"{partitions}: set it to {found}, or name a new topic in INTEREST_PERSON_TOPIC "
            "(people are routed by their count, so it cannot change under a running deployment)")
    copies = min((len(p.get("replica_nodes") or []) for p in described["partitions"]), default=0)
    if 0 < copies < settings.kafka_topic_replication:
        log.warning("the person topic %r has %d replicas, INTEREST_KAFKA_TOPIC_REPLICATION asks for %d; an "
                    "existing topic is not changed (kafka-reassign-partitions adds replicas)",
                    person, copies, settings.kafka_topic_replication)


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The topic configs the worker sets on topics it creates; the others get the cluster's defaults.

    The person topic's retention bounds how long the update stage may be held (a store outage) before
    envelopes whose raw offsets are already committed expire, so it is ours to choose, not a cluster
    default that may be hours; with 3 or more replicas asked it also takes writes only while 2 are in
    sync (``acks=all`` then means two copies; the cluster's default, 1, would let one do).  The DLQ's
    retention bounds how long a dead letter waits for ``interest dlq replay``.
    """
    day_ms = 86_400_000
    person = {"retention.ms": str(round(settings.person_topic_retention_days * day_ms))}
    if settings.kafka_topic_replication >= 3:
        person["min.insync.replicas"] = "2"
    return {settings.person_topic: person,
            settings.dlq_topic: {"retention.ms": str(round(settings.dlq_retention_days * day_ms))}}


def input_topics(settings: Settings) -> dict[str, int]:
    """The topics producers write (raw events, identity links), with their partition counts.

    ``interest produce`` creates these only: the person, DLQ and models topics are the worker's, made
    with the worker's settings (replicas, retention, person partitions), not a producer host's.
    """
    topics = {t: settings.topic_partitions for t in settings.raw_topics()}
    topics[settings.identity_topic] = settings.topic_partitions
    return topics


def worker_topics(settings: Settings) -> dict[str, int]:
    """Every topic the worker reads or writes, with its partition count."""
    topics = input_topics(settings)
    topics[settings.person_topic] = settings.person_partitions
    topics[settings.dlq_topic] = 1
    topics[settings.models_topic] = 1
    return topics


def check_kafka_access(settings: Settings, timeout_s: float = 15.0) -> None:
    """Connect once to each bootstrap server with the security settings; raise ``KafkaConfigError``
    when the broker rejects the SASL credentials or its TLS certificate does not verify.

    Why: Kafka clients treat every failed connection alike and retry until a
    timeout (kafka-python's admin then only says "Unable to bootstrap"), so a
    wrong password or CA would look like a slow broker.  These two are operator
    errors that no retry fixes.  A broker that is merely unreachable or slow is
    not an error here: the caller goes on and its clients wait for it as before.
    Uses aiokafka, the library the Faust worker itself connects with.
    """
    import asyncio

    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

    proto = settings.kafka_security_protocol
    if proto == KafkaSecurity.PLAINTEXT:
        return
    ctx = ssl_context(settings)
    sasl = proto in (KafkaSecurity.SASL_PLAINTEXT, KafkaSecurity.SASL_SSL)
    password = settings.kafka_sasl_password.get_secret_value() if sasl and settings.kafka_sasl_password else None

    async def probe(server: str) -> None:
        host, _, port = server.rpartition(":")
        conn = await asyncio.wait_for(
            create_conn(host, int(port), client_id="interest-check", ssl_context=ctx, security_protocol=proto.value,
                        request_timeout_ms=int(timeout_s * 1000),
                        sasl_mechanism=settings.kafka_sasl_mechanism if sasl else None,
                        sasl_plain_username=settings.kafka_sasl_username if sasl else None,
                        sasl_plain_password=password),
            timeout_s,
        )
        conn.close()

    for server in settings.bootstrap_servers():
        try:
            asyncio.run(probe(server))
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
            raise KafkaConfigError(
                f"Kafka broker {server} rejected SASL {settings.kafka_sasl_mechanism} login for user "
                f"{settings.kafka_sasl_username!r} ({type(exc).__name__}): check INTEREST_KAFKA_SASL_USERNAME, "
                "INTEREST_KAFKA_SASL_PASSWORD and INTEREST_KAFKA_SASL_MECHANISM"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaConfigError(
                f"cannot verify the TLS certificate of Kafka broker {server} ({exc.verify_message}): check "
                "INTEREST_KAFKA_SSL_CAFILE (the CA that signed the broker's certificate)"
                + (" and INTEREST_KAFKA_SSL_CHECK_HOSTNAME" if "hostname" in str(exc).lower() else "")
            ) from None
        except (TimeoutError, OSError, KafkaError):
            continue  # unreachable or slow: the worker's clients retry it
        return  # one server accepted the settings: they are right
