"""The topics a worker creates: their replicas and configs, refusals, and the person topic's partition count.

The CreateTopics requests are read by a spy that passes them on to the real broker: the embedded
broker accepts any replica count and answers DescribeConfigs with nothing, so what it reports back
would not tell a right request from a wrong one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import RequestTimedOutError

from schemas.settings import Settings
from streams import faust_tuning
from streams.kafka_config import KafkaConfigError, ensure_topics, input_topics, kafka_python_options, worker_topics

REAL_CREATE = KafkaAdminClient.create_topics


def _create(settings: Settings, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="test-topics")
    try:
        REAL_CREATE(admin, [NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def _listed(settings: Settings) -> set[str]:
    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="test-topics")
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, NewTopic]:
    """Every topic a CreateTopics request asked for, by name (the request still goes to the broker)."""
    asked: dict[str, NewTopic] = {}

    def spy(self: KafkaAdminClient, new_topics: list[NewTopic], *args: Any, **kwargs: Any) -> Any:
        asked.update({t.name: t for t in new_topics})
        return REAL_CREATE(self, new_topics, *args, **kwargs)

    monkeypatch.setattr(KafkaAdminClient, "create_topics", spy)
    return asked


def test_worker_topics_ask_for_the_cluster_default_replicas_and_their_own_retention(
        make_settings: Callable[..., Settings], sent: dict[str, NewTopic]) -> None:
    settings = make_settings(person_topic_retention_days=2.5)
    topics = faust_tuning.app_topics(settings)
    leader = faust_tuning.lean_app(settings)._leader_assignor._leader_topic_name  # what Faust itself declares
    assert topics[leader] == 1  # made by the worker, with its replicas, before Faust looks for it
    ensure_topics(settings, topics)
    assert set(sent) == set(topics) <= _listed(settings)
    assert {t.replication_factor for t in sent.values()} == {-1}  # the cluster's default.replication.factor
    assert {name: t.num_partitions for name, t in sent.items()} == topics
    assert sent[settings.person_topic].topic_configs == {"retention.ms": "216000000"}  # 2.5 days
    assert sent[settings.dlq_topic].topic_configs == {"retention.ms": "2592000000"}  # 30 days
    others = set(sent) - {settings.person_topic, settings.dlq_topic}
    assert all(sent[name].topic_configs == {} for name in others)  # raw, identity, models, leader: cluster defaults


def test_three_replicas_asked_make_the_person_topic_take_writes_only_with_two_in_sync(
        make_settings: Callable[..., Settings], sent: dict[str, NewTopic]) -> None:
    settings = make_settings(kafka_topic_replication=3)
    ensure_topics(settings, worker_topics(settings))
    assert {t.replication_factor for t in sent.values()} == {3}
    assert sent[settings.person_topic].topic_configs == {"retention.ms": "604800000", "min.insync.replicas": "2"}
    assert sent[settings.dlq_topic].topic_configs == {"retention.ms": "2592000000"}


@pytest.mark.parametrize("field, value", [("kafka_topic_replication", 0), ("kafka_topic_replication", -2),
                                          ("kafka_topic_replication", 33), ("person_topic_retention_days", 0.01),
                                          ("dlq_retention_days", 0)])
def test_settings_outside_their_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_the_producer_creates_only_the_topics_producers_write(make_settings: Callable[..., Settings],
                                                            sent: dict[str, NewTopic]) -> None:
    """The person, DLQ and models topics are made by the worker, with its settings, not a producer host's."""
    settings = make_settings(person_partitions=4)
    _create(settings, settings.person_topic, 2)  # a worker made it with another count: not the producer's business
    from interest.produce import produce_events

    assert produce_events(settings, [], rate=0) == 0
    assert set(sent) == set(input_topics(settings))
    assert not {settings.dlq_topic, settings.models_topic} & _listed(settings)


def test_person_topic_with_the_same_count_is_accepted_again(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings, worker_topics(settings))
    ensure_topics(settings, worker_topics(settings))  # a second worker, a restart: no error, nothing changes


def test_person_topic_with_another_partition_count_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(person_partitions=4)
    _create(settings, settings.person_topic, 2)
    with pytest.raises(KafkaConfigError, match=r"has 2 partitions but INTEREST_PERSON_PARTITIONS is 4"):
        ensure_topics(settings, worker_topics(settings))
    # The raw topics' counts are free: an existing raw topic with another count is used as it is.
    raw = make_settings(topic_partitions=2)
    _create(raw, raw.raw_topics()[0], 3)
    ensure_topics(raw, worker_topics(raw))


def test_a_person_topic_another_process_made_meanwhile_is_checked_too(make_settings: Callable[..., Settings],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers start at once: the other one creates the topic between this one's listing and its request."""
    settings = make_settings(person_partitions=4)
    _create(settings, settings.person_topic, 2)
    monkeypatch.setattr(KafkaAdminClient, "list_topics", lambda self: [])  # listed before the other one's create
    with pytest.raises(KafkaConfigError, match=r"has 2 partitions but INTEREST_PERSON_PARTITIONS is 4"):
        ensure_topics(settings, worker_topics(settings))


def _answer(*topics: tuple[str, int, str | None]) -> dict[str, Any]:
    return {"topics": [{"name": n, "error_code": c, "error_message": m} for n, c, m in topics]}


def test_a_refusal_after_an_already_exists_is_not_hidden(make_settings: Callable[..., Settings],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python raises the first topic's error only: "already exists" first must not swallow the next."""
    settings = make_settings(kafka_topic_replication=3)
    raw, person = settings.raw_topics()[0], settings.person_topic
    answer = _answer((raw, 36, "exists"), (person, 38, "Replication factor: 3 larger than available brokers: 1."))
    monkeypatch.setattr(KafkaAdminClient, "create_topics", lambda self, topics, **kw: answer)
    with pytest.raises(KafkaConfigError, match=r"refused to create topic .*by_person.*InvalidReplicationFactor.*"
                                               r"INTEREST_KAFKA_TOPIC_REPLICATION=3"):
        ensure_topics(settings, worker_topics(settings))


def test_a_passing_refusal_is_raised_as_itself_for_a_restart(make_settings: Callable[..., Settings],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The request timed out: not a setting to fix, so not exit 2; the process's restart tries again."""
    settings = make_settings()
    answer = _answer((settings.person_topic, 7, None))
    monkeypatch.setattr(KafkaAdminClient, "create_topics", lambda self, topics, **kw: answer)
    with pytest.raises(RequestTimedOutError, match="by_person"):
        ensure_topics(settings, worker_topics(settings))


def test_a_person_topic_not_yet_in_the_metadata_is_waited_for_and_a_refused_describe_is_exit_2(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    ensure_topics(settings, worker_topics(settings))
    real = KafkaAdminClient.describe_topics
    answers = [[{"name": settings.person_topic, "error_code": 3, "partitions": []}]] * 2  # just made elsewhere

    def describe(self: KafkaAdminClient, topics: list[str], *args: Any, **kwargs: Any) -> Any:
        return answers.pop() if answers else real(self, topics, *args, **kwargs)

    monkeypatch.setattr(KafkaAdminClient, "describe_topics", describe)
    ensure_topics(settings, worker_topics(settings))  # two UnknownTopicOrPartition answers, then the topic
    assert answers == []
    denied = [{"name": settings.person_topic, "error_code": 29, "partitions": []}]  # TopicAuthorizationFailed
    monkeypatch.setattr(KafkaAdminClient, "describe_topics", lambda self, topics, *a, **kw: denied)
    with pytest.raises(KafkaConfigError, match="cannot describe the person topic .*TopicAuthorizationFailed"):
        ensure_topics(settings, worker_topics(settings))


def test_an_announcement_makes_the_models_topic_a_trainer_may_publish_to_first(
        make_settings: Callable[..., Settings]) -> None:
    from streams.model_watch import announce

    settings = make_settings()
    announce(settings, "v1", "publish")
    assert settings.models_topic in _listed(settings)


def test_worker_refuses_to_start_on_a_person_topic_of_another_count(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(person_partitions=4)
    _create(settings, settings.person_topic, 6)
    proc = subprocess.run([sys.executable, "-m", "interest.cli", "worker"], capture_output=True, text=True,
                          env=settings.child_env() | {"PATH": os.environ.get("PATH", "")}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has 6 partitions but INTEREST_PERSON_PARTITIONS is 4" in proc.stderr
