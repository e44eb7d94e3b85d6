"""The operations kit: alert rules, their PrometheusRule twin, and the Grafana dashboard.

deploy/prometheus/alerts.yml is checked and unit-tested by the real ``promtool``
(Debian package ``prometheus``; .ci/run installs it). Without promtool these tests skip
on a workstation but fail in CI (``CI=true``): a rules file nobody parsed is worse than none.
The rest is offline: the PrometheusRule must be the generated copy of alerts.yml, and every
metric a rule or a panel queries must be one streams/metrics.py declares, so a renamed
metric breaks this test instead of silently blanking an alert.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
GENERATOR = RULES_DIR / "to_prometheusrule.py"
OVERLAY = DEPLOY / "k8s" / "overlays" / "prometheus-operator"
PROMETHEUS_RULE = OVERLAY / "prometheusrule.yaml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "interest.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
METRICS_PY = ROOT / "streams" / "metrics.py"
README = ROOT / "README.md"

# The runbook's alerts (README "### Metrics and alerts") and who gets woken up for each.
EXPECTED_SEVERITY = {
    "InterestFreshnessP99High": "page",
    "InterestFreshnessP50High": "ticket",
    "InterestConsumerLagGrowing": "page",
    "InterestStoreUnavailable": "page",
    "InterestModelRefused": "ticket",
    "InterestModelVersionsDiffer": "ticket",
    "InterestWorkerNotReady": "ticket",
    "InterestWorkerDown": "page",
}
# Series that come from Prometheus itself, not from the worker.
PROMETHEUS_SERIES = {"up"}

Doc = dict[str, Any]


# ------------------------------------------------------------------ helpers
def tool(name: str) -> str:
    """Path of a Prometheus binary; skip without it, except in CI where it must be installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} not on PATH with CI=true: .ci/run installs it (apt-get install prometheus)")
    pytest.skip(f"{name} not on PATH (apt-get install --no-install-recommends prometheus); with CI=true this fails")


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> Doc:
    doc: Doc = yaml.safe_load(ALERTS.read_text())
    return doc


def rules() -> list[Doc]:
    return [rule for group in alerts()["groups"] for rule in group["rules"]]


def dashboard() -> Doc:
    doc: Doc = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", []) if "expr" in t]


def generator() -> ModuleType:
    """deploy/prometheus/to_prometheusrule.py (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("to_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_metrics() -> set[str]:
    """Sample names the worker's /metrics can carry, from streams/metrics.py's declarations.

    Parsed (not imported) so the test needs none of the worker's dependencies. Suffixes as
    prometheus_client writes them: a Counter is ``<base>_total`` plus ``<base>_created``
    whether or not the declared name ends in _total; a Histogram ``_bucket``/``_sum``/
    ``_count``/``_created``; an Info ``<name>_info``; a Gauge its name.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        kind, name = node.func.id, first.value
        if kind == "Counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "Histogram":
            names |= {f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created")}
        elif kind == "Summary":
            names |= {f"{name}{suffix}" for suffix in ("_sum", "_count", "_created")}
        elif kind == "Gauge":
            names.add(name)
        elif kind == "Info":
            names.add(f"{name}_info")
    return names


_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring",
                    "group_left", "group_right", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors ($__rate_interval too)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (what a runbook link points at)."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def readme_anchors() -> set[str]:
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", README.read_text(), flags=re.M)}


# ------------------------------------------------------------------ promtool
def test_promtool_check_rules() -> None:
    proc = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(EXPECTED_SEVERITY)} rules found" in proc.stdout


def test_promtool_rule_unit_tests() -> None:
    # Run from the rules' directory: alerts_test.yml names alerts.yml relative to itself.
    proc = run([tool("promtool"), "test", "rules", ALERTS_TEST.name], cwd=RULES_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_compose_prometheus_config_loads_the_rules() -> None:
    """deploy/prometheus.yml names the rules relative to itself: promtool resolves them from a checkout."""
    proc = run([tool("promtool"), "check", "config", str(DEPLOY / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout and f"{len(EXPECTED_SEVERITY)} rules found" in proc.stdout


# ------------------------------------------------------------ rules, offline
def test_rules_are_the_runbook_alerts_with_severity_summary_and_runbook() -> None:
    found = {rule["alert"]: rule for rule in rules()}
    assert {name: rule["labels"]["severity"] for name, rule in found.items()} == EXPECTED_SEVERITY
    anchors = readme_anchors()
    for name, rule in found.items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "README.md" and anchor in anchors, f"{name}: runbook {annotations['runbook']} has no heading"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in EXPECTED_SEVERITY:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no promtool case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no promtool case where it stays quiet"


def test_prometheusrule_is_generated_from_alerts_yml() -> None:
    obj = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    assert obj["spec"]["groups"] == alerts()["groups"], "one source of truth: the groups must be identical"
    assert PROMETHEUS_RULE.read_text() == generator().render(ALERTS.read_text()), (
        "prometheusrule.yaml is stale: run python deploy/prometheus/to_prometheusrule.py"
    )


def test_prometheus_operator_overlay_adds_only_the_rule() -> None:
    kz = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kz["resources"] == ["../../base", "prometheusrule.yaml"]
    assert kz.get("namespace") == "interest"
    # Base must stay applicable on clusters without the operator's CRDs.
    base = DEPLOY / "k8s" / "base"
    kinds = {doc["kind"] for path in base.glob("*.yaml") for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert "PrometheusRule" not in kinds


# ---------------------------------------------------------------- dashboard
def test_dashboard_loads_and_every_panel_queries_prometheus() -> None:
    board = dashboard()
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    assert board["uid"] and board["title"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: a target without a Prometheus expr"
            assert target.get("datasource", panel.get("datasource")) == {"type": "prometheus", "uid": uid}
    # The panels the runbook reads, by the metric each one needs.
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    wanted = {
        "interest_events_in_total", "interest_events_rejected_total", "interest_freshness_seconds_bucket",
        "interest_batch_size_bucket", "interest_encode_seconds_bucket", "interest_store_write_seconds_bucket",
        "interest_consumer_lag", "interest_model_info", "interest_ready",
    }
    assert wanted <= used, f"no panel for {sorted(wanted - used)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses them as recording rules (Grafana's $__rate_interval replaced by a duration)."""
    recording = [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    proc = run([tool("promtool"), "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------- metric names
def test_metric_name_parser() -> None:
    """The parser the next test relies on: selectors in, functions/labels/durations/keywords out."""
    assert metric_names('sum by (le) (rate(a_bucket{job=~"x.*"}[5m])) > 30') == {"a_bucket"}
    assert metric_names("deriv(sum(b)[5m:1m]) > 0 or count by (r) (time() - c_created < 900)") == {"b", "c_created"}
    assert metric_names('up{job="w"} == 0 and on (instance) d offset 15m') == {"up", "d"}
    assert metric_names("rate(e_total[$__rate_interval]) / ignoring(x) f_count") == {"e_total", "f_count"}
    exported = exported_metrics()
    assert {"interest_events_in_total", "interest_events_in_created", "interest_freshness_seconds_bucket",
            "interest_consumer_lag", "interest_ready", "interest_model_info"} <= exported


def test_rules_and_dashboard_use_only_metrics_the_worker_exports() -> None:
    known = exported_metrics() | PROMETHEUS_SERIES
    used = [(f"alert {r['alert']}", r["expr"]) for r in rules()]
    used += [(f"panel {title!r}", expr) for title, expr in dashboard_exprs()]
    unknown = sorted({(where, name) for where, expr in used for name in metric_names(expr) - known})
    assert not unknown, f"not exported by streams/metrics.py: {unknown}"
