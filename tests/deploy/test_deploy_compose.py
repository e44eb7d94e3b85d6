"""deploy/docker-compose.yml and deploy/prometheus.yml: structure, wiring and settings keys.

Offline: the file is parsed with PyYAML (anchors and merge keys resolved) and validated
against the Compose Specification JSON schema vendored beside this file
(compose-spec.json, Apache-2.0, see compose-spec.LICENSE; the copy check-jsonschema
vendors). ``docker compose config`` needs no engine but does need the Compose v2 CLI:
it runs when ``docker compose``, a v2 ``docker-compose`` or $INTEREST_TEST_COMPOSE_BIN
is available, and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
SETTING_KEYS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}

Doc = dict[str, Any]


def compose() -> Doc:
    with COMPOSE_FILE.open() as fh:
        doc: Doc = yaml.safe_load(fh)
    return doc


def services() -> dict[str, Doc]:
    return dict(compose()["services"])


def command(svc: Doc) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def worker_services() -> dict[str, Doc]:
    return {name: svc for name, svc in services().items() if command(svc)[:1] == ["worker"]}


def interest_services() -> dict[str, Doc]:
    """Services that run the `interest` CLI (built from the project's Dockerfiles)."""
    return {
        name: svc for name, svc in services().items() if str(svc.get("image", "")).startswith("interest-")
    }


def env(svc: Doc) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ schema
def test_matches_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (via kubernetes-validate) checks it")
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def compose_cli() -> list[str] | None:
    candidates: list[list[str]] = []
    if os.environ.get("INTEREST_TEST_COMPOSE_BIN"):
        candidates.append([os.environ["INTEREST_TEST_COMPOSE_BIN"]])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            proc = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=20)
        except OSError:
            continue
        # v1 (python docker-compose) does not know every key of the current specification.
        if proc.returncode == 0 and re.search(r"v?2\.\d+", proc.stdout):
            return cli
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no Compose v2 CLI here (docker compose plugin, docker-compose v2 or "
            "INTEREST_TEST_COMPOSE_BIN); the schema test above still ran"
        )
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- services
def test_required_services_exist() -> None:
    names = set(services())
    assert {"kafka", "cassandra", "schema-init", "trainer", "prometheus"} <= names
    assert len(worker_services()) >= 2, "two workers, to show partitions being shared"


def test_kafka_is_a_single_kraft_broker_reachable_in_and_out() -> None:
    kafka = services()["kafka"]
    kenv = env(kafka)
    assert set(kenv["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft combined mode"
    listeners = dict(item.split("://", 1) for item in kenv["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://", 1) for item in kenv["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in kenv["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) <= set(listeners) <= set(protocols)
    assert kenv["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert kenv["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    # In-network listener: what INTEREST_BROKER_URL names.
    broker = env(next(iter(worker_services().values())))["INTEREST_BROKER_URL"].removeprefix("kafka://")
    assert broker in advertised.values()
    # Host listener: its container port is published.
    published = {str(p).rsplit(":", 1)[-1] for p in kafka.get("ports", [])}
    host_ports = {
        addr.rsplit(":", 1)[-1] for name, addr in listeners.items() if advertised.get(name) != broker
    }
    assert published & host_ports, "a listener for clients on the host must be published"
    assert kenv["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1", "one broker"
    assert "healthcheck" in kafka


def test_cassandra_is_5_0_with_a_cql_healthcheck() -> None:
    cassandra = services()["cassandra"]
    assert str(cassandra["image"]).startswith("cassandra:5.0")
    assert "cqlsh" in " ".join(cassandra["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/cassandra") for v in cassandra.get("volumes", []))


def test_startup_order() -> None:
    svcs = services()
    init = svcs["schema-init"]
    assert command(init)[:2] == ["store", "init"]
    assert init["depends_on"]["cassandra"]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no"
    for name, svc in {**worker_services(), "trainer": svcs["trainer"]}.items():
        deps = svc["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["cassandra"]["condition"] == "service_healthy", name
        assert deps["schema-init"]["condition"] == "service_completed_successfully", name


def test_workers() -> None:
    for name, svc in worker_services().items():
        assert svc["image"] == services()["schema-init"]["image"], name
        assert "Dockerfile.worker" in svc["build"]["dockerfile"]
        test = " ".join(svc["healthcheck"]["test"])
        assert "/health" in test and "/ready" not in test, f"{name}: liveness is /health"
        # SIGTERM: finish + commit the batch in flight, leave the group (default grace is 10 s).
        assert seconds(svc["stop_grace_period"]) >= 30, name
        assert env(svc).get("INTEREST_WEB_PORT", "6066") == "6066"
    published = [p for svc in worker_services().values() for p in svc.get("ports", [])]
    hosts = [str(p).rsplit(":", 2)[-2] for p in published]
    assert len(hosts) == len(set(hosts)), "two workers cannot publish the same host port"


def test_trainer() -> None:
    trainer = services()["trainer"]
    assert command(trainer)[:1] == ["trainer"]
    assert "--every" in command(trainer) or "--once" in command(trainer)
    assert "Dockerfile.trainer" in trainer["build"]["dockerfile"]


def test_registry_volume_is_shared() -> None:
    doc = compose()
    svcs = doc["services"]

    def registry_mount(svc: Doc) -> list[str]:
        path = env(svc)["INTEREST_REGISTRY"]
        return [str(v) for v in svc.get("volumes", []) if str(v).split(":")[1] == path]

    trainer = registry_mount(svcs["trainer"])
    assert len(trainer) == 1 and not trainer[0].endswith(":ro"), "the trainer publishes into the registry"
    volume = trainer[0].split(":")[0]
    assert volume in doc["volumes"], "a named volume, shared by the services"
    for name, svc in worker_services().items():
        (mount,) = registry_mount(svc)
        assert mount.split(":")[0] == volume, name


@pytest.mark.parametrize("name", ["schema-init", "worker-1", "worker-2", "trainer", "producer"])
def test_environment_keys_are_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services()[name]
    environment = env(svc)
    unknown = sorted(k for k in environment if k.startswith(ENV_PREFIX) and k not in SETTING_KEYS)
    assert not unknown, f"{name}: not fields of schemas.settings.Settings: {unknown}"
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    load_settings()  # values parse too (URLs, enums, numbers)


def test_every_interest_service_has_the_settings_it_needs() -> None:
    assert set(interest_services()) >= {"schema-init", "trainer", *worker_services()}
    for name, svc in interest_services().items():
        environment = env(svc)
        assert environment["INTEREST_STORE_URL"].startswith("cassandra://cassandra:9042/"), name
        assert environment["INTEREST_BROKER_URL"] == "kafka://kafka:9092", name


def test_host_ports_bind_to_loopback() -> None:
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} would listen on every interface"


# -------------------------------------------------------------- prometheus
def test_prometheus_scrapes_every_worker() -> None:
    prom = services()["prometheus"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prom["volumes"]}
    config_src = mounts["/etc/prometheus/prometheus.yml"]
    assert (DEPLOY / config_src).resolve() == DEPLOY / "prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["interest-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:6066" for name in worker_services()}


def test_prometheus_loads_the_alert_rules() -> None:
    """Every rule_files entry is mounted where Prometheus resolves it (relative to its config file)."""
    prom = services()["prometheus"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prom["volumes"]}
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"], "the runbook's alerts are loaded"
    for entry in config["rule_files"]:
        target = entry if entry.startswith("/") else f"/etc/prometheus/{entry}"
        assert target in mounts, f"rule file {entry} is not mounted into the prometheus service"
        assert (DEPLOY / mounts[target]).resolve() == DEPLOY / "prometheus" / "alerts.yml"
        assert (DEPLOY / entry).resolve() == DEPLOY / "prometheus" / "alerts.yml", "same path from a checkout"


# ----------------------------------------------------------------- grafana
def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    svcs = services()
    grafana = svcs["grafana"]
    image, _, tag = str(grafana["image"]).partition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag), "a pinned Grafana version"
    assert [str(p) for p in grafana["ports"]] == ["127.0.0.1:3000:3000"]
    assert "prometheus" in grafana["depends_on"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve() == DEPLOY / "grafana" / "provisioning"
    # The dashboard provider reads the folder the dashboards are mounted at.
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/interest.yml").read_text())
    (prov,) = provider["providers"]
    dash_src = mounts[prov["options"]["path"]]
    assert ((DEPLOY / dash_src).resolve() / "interest.json").is_file()
    # The datasource reaches the prometheus service on its container port.
    (source,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in svcs["prometheus"]["ports"])
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape, "$__rate_interval needs the real scrape interval"
