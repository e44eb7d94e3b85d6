"""Test helpers: run `interest worker` as a real process, wait for conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interest.embedded import free_port
from interest.split_worker import stage_ports
from schemas.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    return settings.child_env()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


class WorkerProcess:
    """``python -m interest.cli worker`` with the given settings, logs to a file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker", *args: str, **env_extra: str) -> None:
        self.args = args  # e.g. "--split"
        self.port = free_port(span=2 if "--split" in args else 1)  # --split: ingest listens on port + 1
        self.settings = settings.model_copy(update={"web_port": self.port})
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.env = {**settings_env(self.settings), **env_extra}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "interest.cli", "worker", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def get(self, path: str, port: int | None = None) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}{path}", timeout=2) as resp:
                body = resp.read()
                return resp.status, (json.loads(body) if path != "/metrics" else body.decode())
        except urllib.error.HTTPError as exc:  # a 503 /ready still says why in its body
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, None
        except OSError:
            return 0, None

    @property
    def ports(self) -> list[int]:
        """Where the worker serves: ``--split`` has the update process on the port, the ingest one after it."""
        return stage_ports(self.port, "--split" in self.args)

    def ready(self) -> bool:
        """``/ready`` answers 200 on every port: a split worker is ready when both of its stages are."""
        return all(self.get("/ready", port)[0] == 200 for port in self.ports)

    def wait_ready(self, timeout: float = 60, port: int | None = None) -> None:
        """Until ``/ready`` (on ``port``; by default every port of the worker) answers 200; on timeout say why not."""
        if port is None and len(self.ports) > 1:
            started = time.monotonic()
            for each in self.ports:
                self.wait_ready(max(1.0, timeout - (time.monotonic() - started)), port=each)
            return
        last: list[tuple[int, Any]] = []

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            last[:] = [self.get("/ready", port)]
            return last[0][0] == 200

        try:
            wait_until(ready, timeout, what=f"worker /ready on port {port or self.port}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer {last}\n{self.logs()[-6000:]}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if sig == signal.SIGKILL:  # what a container kill does: every process of it (a --split worker's children),
            with contextlib.suppress(ProcessLookupError):  # also those left after the leader (its own session) is gone
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            if sig != signal.SIGKILL:  # as Kubernetes does: to the main process only (a --split parent forwards it)
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: a --split worker's children too
                proc.wait()
        return proc.returncode

    def __enter__(self) -> WorkerProcess:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(settings: Settings, *args: str, timeout: float = 300) -> Any:
    """Run ``interest ARGS`` with ``settings`` in the environment; stdout (or its last line) as JSON."""
    proc = subprocess.run([sys.executable, "-m", "interest.cli", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"interest {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    try:
        return json.loads(proc.stdout)  # one (possibly indented) document
    except ValueError:
        return json.loads(proc.stdout.strip().splitlines()[-1])


def metric_value(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _scan(settings: Settings, version: str) -> dict[str, Any]:
    from streams.stores.base import state_pages
    from streams.stores.factory import opened_store

    async with opened_store(settings) as store:
        states = [s async for page in state_pages(store, 500) for s in page]
        profiles = {}
        for state in states:
            row = await store.get_profile(state.person_id, version)
            if row is not None:
                profiles[state.person_id] = row
        return {"states": {s.person_id: s for s in states}, "profiles": profiles}


def events_seen(worker: Any) -> float:
    """Events the worker's update stage has taken in: applied, or too late for a person's full window.

    What to wait for before using the store when heavy people's topics may arrive out of order: a
    too-late event is counted but not added to ``event_count``.
    """
    text = worker.get("/metrics")[1] or ""
    return metric_value(text, "interest_events_applied_total") + metric_value(text, "interest_events_too_late_total")


def scan(settings: Settings, version: str) -> dict[str, Any]:
    """Every stored sequence state and its ``version`` profile row: ``{"states": ..., "profiles": ...}``."""
    import asyncio

    return asyncio.run(_scan(settings, version))


def checksum(snapshot: dict[str, Any]) -> str:
    """A digest of every profile row (vector bytes included) and every sequence in a ``scan``."""
    import hashlib

    import orjson

    h = hashlib.sha256()
    for person in sorted(snapshot["profiles"]):
        p = snapshot["profiles"][person]
        h.update(orjson.dumps([p.person_id, p.model_version, p.event_count, p.first_ts_ms, p.last_ts_ms,
                               p.platforms, p.write_ts, p.updated_ms]))
        h.update(p.vector.tobytes())
    for person in sorted(snapshot["states"]):
        s = snapshot["states"][person]
        h.update(orjson.dumps([s.person_id, [e.event_id for e in s.events], s.write_ts]))
    return h.hexdigest()


def self_signed_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1/localhost: (cert, key); skips without the openssl CLI."""
    import shutil

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
