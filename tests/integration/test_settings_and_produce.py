"""Settings validation, secret masking, and `interest produce` against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import orjson
import pytest
from kafka import KafkaConsumer

from interest.embedded import EmbeddedBroker
from schemas.adapters import load_adapters
from schemas.normalize import Normalizer
from schemas.settings import Settings, load_settings
from streams.kafka_config import kafka_python_options


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "interest.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_unknown_setting_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_BATCH_SIZ", "5")
    with pytest.raises(ValueError, match="INTEREST_BATCH_SIZ"):
        load_settings()
    proc = run_cli("config", env={"INTEREST_BATCH_SIZ": "5"})
    assert proc.returncode == 2 and "INTEREST_BATCH_SIZ" in proc.stderr


def test_config_masks_secrets() -> None:
    env = {"INTEREST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "INTEREST_KAFKA_SASL_USERNAME": "svc",
           "INTEREST_KAFKA_SASL_PASSWORD": "hunter2-kafka", "INTEREST_CASSANDRA_USERNAME": "cass",
           "INTEREST_CASSANDRA_PASSWORD": "hunter2-cass", "INTEREST_BATCH_SIZE": "64"}
    for args in (("config",), ("config", "--json")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "hunter2" not in proc.stdout + proc.stderr
        assert "**********" in proc.stdout
    shown = json.loads(run_cli("config", "--json", env=env).stdout)
    assert shown["batch_size"] == 64 and shown["kafka_sasl_username"] == "svc"


def test_sasl_without_password_names_what_to_set() -> None:
    with pytest.raises(ValueError, match="INTEREST_KAFKA_SASL_PASSWORD"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")


@pytest.mark.parametrize("url", ["postgres://x", "cassandra:///ks", "cassandra://h1:9042/"])
def test_bad_store_urls_fail_up_front(url: str) -> None:
    with pytest.raises(ValueError, match="store_url|cassandra"):
        Settings(store_url=url)


def test_cassandra_url_parsing() -> None:
    s = Settings(store_url="cassandra://c1,c2:9142/prod?dc=eu-west&consistency=QUORUM")
    assert s.cassandra_target() == (["c1", "c2"], 9142, "prod", {"dc": "eu-west", "consistency": "QUORUM"})


def test_streams_import_does_not_import_torch() -> None:
    code = ("import sys, streams, streams.app, interest.cli, streams.updater, interest.worker_cmd, "
            "interest.query_cmd, streams.stores.factory; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_produce_synthetic_is_read_back_by_a_plain_consumer(broker: EmbeddedBroker, make_settings) -> None:
    settings = make_settings()
    env = {"INTEREST_" + k.upper(): (json.dumps(v) if isinstance(v, list) else str(v))
           for k, v in settings.model_dump(mode="json").items() if v is not None}
    proc = run_cli("produce", "--synthetic", "--users", "30", "--events", "400", "--seed", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["produced"] == 400

    consumer = KafkaConsumer(*settings.raw_topics(), settings.identity_topic, **kafka_python_options(settings),
                             auto_offset_reset="earliest", consumer_timeout_ms=4000, group_id=None)
    normalizer = Normalizer(load_adapters())
    per_platform: Counter[str] = Counter()
    links = 0
    keys_ok = True
    for msg in consumer:
        if msg.topic == settings.identity_topic:
            links += 1
            continue
        platform = msg.topic.split(".")[-2]
        decoded = normalizer.decode(msg.value, platform, msg.topic.split(".")[-1])
        assert not decoded.rejected, decoded.rejected
        event = decoded.events[0]
        per_platform[platform] += 1
        keys_ok &= msg.key.decode() == event.platform_user_id
    consumer.close()
    assert sum(per_platform.values()) == 400
    assert len(per_platform) == 4, per_platform
    assert keys_ok, "messages are keyed by the platform user id"
    assert links > 0, "some anonymous devices were linked to people"
    assert orjson.loads(orjson.dumps(summary))["seed"] == 3
