"""A real Prometheus scraping a real worker, with the alert rules loaded.

promtool's unit tests prove the rules' logic on made-up series; this proves the wiring on
real ones: the names the worker exports are the names the rules and the dashboard query,
the rules file loads and evaluates in a server, and the series exist after traffic. The
Debian ``prometheus`` binary runs on loopback with a 1 s scrape and evaluation interval.
Without it the test skips, except in CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from interest.embedded import free_port
from interest.produce import produce_events
from interest.synthetic import SyntheticTraffic
from schemas.adapters import load_adapters
from testkit.helpers import WorkerProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "interest.json"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("prometheus not on PATH with CI=true: .ci/run installs it (apt-get install prometheus)")
    pytest.skip("prometheus not on PATH (apt-get install --no-install-recommends prometheus); with CI=true this fails")


class PrometheusAPI:
    """The few HTTP API calls the test needs, against one loopback server."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with an error body
            return json.loads(exc.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails the test on any error (parse, evaluation)."""
        body = self.get("/api/v1/query", query=expr)
        assert body.get("status") == "success", f"{expr!r}: {body.get('errorType')}: {body.get('error')}"
        assert body["data"]["resultType"] == "vector", expr
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single sample's value of ``expr``, or None while there is none yet."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


@contextmanager
def prometheus(tmp_path: Path, worker_port: int) -> Iterator[PrometheusAPI]:
    """A Prometheus server scraping the worker every second with alerts.yml loaded; stopped on exit."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "interest-worker",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
        }],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    argv = [prometheus_binary(), f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    api = PrometheusAPI(port)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            return api.ready()

        wait_until(up, 30, what="prometheus /-/ready")
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_prometheus_scrapes_the_worker_and_evaluates_the_alert_rules(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry, web_host="127.0.0.1")
    traffic = SyntheticTraffic(load_adapters(), users=20, items=100, seed=5)
    now_ms = int(time.time() * 1000)
    events = list(traffic.events(200, now_ms - 2_000, step_ms=5))  # recent: freshness in seconds, not hours

    with WorkerProcess(settings, tmp_path) as worker, prometheus(tmp_path, worker.port) as prom:
        # Traffic only once Prometheus holds samples from before it: the worker drains 200 events
        # within a scrape interval, and a series first seen at its final value has a rate of 0.
        wait_until(lambda: (prom.value('count_over_time(up{job="interest-worker"}[1m])') or 0) >= 2, 20,
                   interval=0.5, what="two scrapes of the worker")
        assert prom.value('up{job="interest-worker"}') == 1
        produce_events(settings, events)

        # The worker's series arrive under the names the rules use.
        wait_until(lambda: (prom.value("sum(rate(interest_freshness_seconds_count[1m]))") or 0) > 0, 40,
                   interval=0.5, what="freshness histogram scraped after traffic")
        wait_until(lambda: prom.query("interest_consumer_lag"), 20, what="lag gauge series")
        wait_until(lambda: prom.value("interest_ready") == 1, 20, what="interest_ready == 1")
        (info,) = prom.query("interest_model_info")
        assert info["metric"]["version"] == version

        # Every rule loaded and evaluated without error.
        expected = {rule["alert"] for rule in alert_rules()}

        def rules_healthy() -> dict[str, Any] | None:
            groups = prom.get("/api/v1/rules", type="alert")["data"]["groups"]
            loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
            if set(loaded) == expected and all(r["health"] == "ok" for r in loaded.values()):
                return loaded
            return None

        loaded = wait_until(rules_healthy, 20, what="alert rules loaded and healthy")
        assert all(not rule.get("lastError") for rule in loaded.values())

        # The alert expressions, as written in alerts.yml, evaluate on the live series.
        exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
        p99 = prom.value(exprs["InterestFreshnessP99High"].rsplit(" > ", 1)[0])
        assert p99 is not None and math.isfinite(p99) and p99 > 0, f"freshness p99 {p99}"
        assert prom.value(exprs["InterestStoreUnavailable"].rsplit(" > ", 1)[0]) == 0.0
        # A healthy single worker: the conditions that cannot hold here return empty vectors.
        for name in ("InterestStoreUnavailable", "InterestModelRefused", "InterestModelVersionsDiffer",
                     "InterestWorkerNotReady", "InterestWorkerDown"):
            assert prom.query(exprs[name]) == [], name
        firing = prom.get("/api/v1/alerts")["data"]["alerts"]
        assert not [a for a in firing if a["state"] == "firing"], firing

        # Every dashboard query is accepted by the server too (Grafana's $__rate_interval -> 1m).
        board = json.loads(DASHBOARD.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                prom.query(target["expr"].replace("$__rate_interval", "1m"))
