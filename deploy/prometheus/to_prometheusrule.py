"""Write deploy/prometheus/alerts.yml as the Prometheus operator's PrometheusRule.

alerts.yml stays the one source of truth (compose loads it, promtool tests it); the
Kubernetes object is generated from it so the two cannot drift. Run it after editing
alerts.yml; ``--check`` exits 1 when the committed file is stale (tests/deploy runs the same
comparison):

    python deploy/prometheus/to_prometheusrule.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
TARGET = HERE.parent / "k8s" / "overlays" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/to_prometheusrule.py: edit
# alerts.yml and re-run the script, not this file (tests/deploy/test_alert_rules.py fails on drift).
# The `release` label is what kube-prometheus-stack's default ruleSelector matches; change it to
# your Prometheus' spec.ruleSelector.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the longer exprs) as literal blocks, readable like in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule object; its namespace comes from the overlay's kustomization."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "interest-worker-alerts",
            "labels": {
                "app.kubernetes.io/name": "interest-worker",
                "app.kubernetes.io/component": "alerts",
                "app.kubernetes.io/part-of": "interest-updater",
                "release": "prometheus",
            },
        },
        "spec": {"groups": groups},
    }


def render(alerts_text: str) -> str:
    """The prometheusrule.yaml text for the rules file's text."""
    groups = yaml.safe_load(alerts_text)["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if prometheusrule.yaml is out of date")
    args = parser.parse_args(argv)
    text = render(ALERTS.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            script = Path(__file__).resolve().relative_to(HERE.parents[1])
            print(f"{TARGET} is stale: run python {script}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
