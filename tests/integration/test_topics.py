"""The topics a worker creates: their replication, and the person topic's partition count as a contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from schemas.settings import Settings
from streams.kafka_config import KafkaConfigError, ensure_topics, kafka_python_options, worker_topics


def _replicas(settings: Settings, topics: list[str]) -> dict[str, set[int]]:
    """Per topic, the replica counts its partitions report (one value when every partition agrees)."""
    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="test-topics")
    try:
        return {t["name"]: {len(p["replica_nodes"]) for p in t["partitions"]} for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def _create(settings: Settings, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="test-topics")
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def test_every_worker_topic_gets_the_replication_asked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(kafka_topic_replication=2)
    topics = worker_topics(settings)
    ensure_topics(settings, topics)
    assert _replicas(settings, list(topics)) == {name: {2} for name in topics}


@pytest.mark.parametrize("value", [0, -2, 33])
def test_replication_outside_its_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="kafka_topic_replication"):
        Settings(kafka_topic_replication=value)


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


def test_worker_refuses_to_start_on_a_person_topic_of_another_count(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(person_partitions=4)
    _create(settings, settings.person_topic, 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env |= {"INTEREST_" + k.upper(): (json.dumps(v) if isinstance(v, list) else str(v))
            for k, v in settings.model_dump(mode="json").items() if v is not None}
    proc = subprocess.run([sys.executable, "-m", "interest.cli", "worker"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has 6 partitions but INTEREST_PERSON_PARTITIONS is 4" in proc.stderr


def test_person_and_dlq_topics_are_created_with_their_own_retention(make_settings: Callable[..., Settings],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CreateTopics request carries (the embedded broker answers DescribeConfigs with nothing)."""
    sent: dict[str, dict[str, str]] = {}
    real = KafkaAdminClient.create_topics

    def spy(self: KafkaAdminClient, new_topics: list[NewTopic], *args: object, **kwargs: object) -> object:
        sent.update({t.name: dict(t.topic_configs) for t in new_topics})
        return real(self, new_topics, *args, **kwargs)

    monkeypatch.setattr(KafkaAdminClient, "create_topics", spy)
    settings = make_settings(person_topic_retention_days=2.5)
    ensure_topics(settings, worker_topics(settings))
    assert set(sent) == set(worker_topics(settings))
    assert sent.pop(settings.person_topic) == {"retention.ms": str(int(2.5 * 86_400_000))}
    assert sent.pop(settings.dlq_topic) == {"retention.ms": str(30 * 86_400_000)}
    assert all(configs == {} for configs in sent.values())  # the raw, identity and models topics: cluster defaults
    assert set(_replicas(settings, list(worker_topics(settings)))) == set(worker_topics(settings))
