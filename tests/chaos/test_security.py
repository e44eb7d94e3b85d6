"""Security: credentials and TLS from settings, clear start-up failures, no secret in any output.

What a user relies on: pointing the worker at a cluster with auth and TLS is
configuration only; a wrong password or an untrusted CA stops the worker at
start-up with a message that names the setting to fix (instead of retrying
forever in silence); and neither the logs nor ``interest config`` ever show
a secret.  Cassandra runs over the real driver against the CQL test server
with PasswordAuthenticator and TLS.  Kafka SASL/SCRAM + TLS end to end is in
``test_kafka_secure.py`` (a TLS + SCRAM proxy in front of the embedded
broker, which cannot serve either itself); here only the settings checks.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interest.produce import produce_events
from schemas.settings import Settings
from testkit.chaos import interest, report, synthetic, wait_for_oracle
from testkit.cqlserver import CqlServer
from testkit.cqlserver.fixtures import unique_keyspace
from testkit.helpers import WorkerProcess, self_signed_cert

PASSWORD = "Sup3r-s3cret-cql-pw"  # distinctive, so a leak is found by a plain substring search
USER = "interest"


@pytest.fixture(scope="module")
def secure_cql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CqlServer, Path, Path]]:
    """A CQL server with PasswordAuthenticator and TLS: (server, its CA, an unrelated CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_cert(directory, "cassandra")
    other, _ = self_signed_cert(directory, "untrusted")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = CqlServer(nodes=1, users={USER: PASSWORD}, ssl_context=context).start()
    yield server, cert, other
    server.stop()


def _secure_settings(chaos_settings: Callable[..., Settings], server: CqlServer, ca: Path, **extra: Any) -> Settings:
    return chaos_settings(store_url=server.url(unique_keyspace(), dc="datacenter1"), cassandra_username=USER,
                          cassandra_password=PASSWORD, cassandra_tls_ca_file=str(ca),
                          cassandra_replication="datacenter1:1", **extra)


def test_cassandra_auth_and_tls_from_settings_and_no_secret_in_output(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path,
    secure_cql: tuple[CqlServer, Path, Path],
) -> None:
    _, version = model_registry
    server, ca, _ = secure_cql
    settings = _secure_settings(chaos_settings, server, ca)
    init = interest(settings, "store", "init", "--dim", "64")
    assert init.returncode == 0, init.stderr
    traffic = synthetic(users=10, events=80, seed=61)
    with WorkerProcess(settings, tmp_path, name="secure", INTEREST_LOG_LEVEL="DEBUG") as worker:
        produce_events(settings, traffic.produced)
        wait_for_oracle(settings, version, traffic.oracle)
        logs = worker.logs()
    config = interest(settings, "config")
    config_json = interest(settings, "config", "--json")
    outputs = {"worker log (DEBUG)": logs, "interest config": config.stdout + config.stderr,
               "interest config --json": config_json.stdout + config_json.stderr,
               "store init": init.stdout + init.stderr}
    leaks = [name for name, text in outputs.items() if PASSWORD in text]
    report("auth + TLS from settings", tls_ca=ca.name, user=USER, profiles=len(traffic.oracle),
           outputs_checked=len(outputs), log_bytes=len(logs), leaks=leaks)
    assert not leaks, f"the password appears in {leaks}"
    assert "**********" in config.stdout


@pytest.mark.parametrize("fault", ["wrong_password", "untrusted_ca"])
def test_bad_credentials_or_ca_fail_at_start_up_naming_the_fix(
    fault: str, chaos_settings: Callable[..., Settings], tmp_path: Path, secure_cql: tuple[CqlServer, Path, Path]
) -> None:
    server, ca, untrusted = secure_cql
    good = _secure_settings(chaos_settings, server, ca)
    assert interest(good, "store", "init", "--dim", "64").returncode == 0
    wrong_password = "Wr0ng-" + PASSWORD
    if fault == "wrong_password":
        bad = good.model_copy(update={"cassandra_password": good.cassandra_password.__class__(wrong_password)})
        names = ["INTEREST_CASSANDRA_USERNAME", "INTEREST_CASSANDRA_PASSWORD"]
    else:
        bad = good.model_copy(update={"cassandra_tls_ca_file": str(untrusted)})
        names = ["INTEREST_CASSANDRA_TLS_CA_FILE"]
    worker = WorkerProcess(bad, tmp_path, name=f"bad-{fault}").start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        worker.stop()
        raise AssertionError(f"the worker kept running with {fault}:\n{worker.logs()[-2000:]}") from None
    logs = worker.logs()
    report(f"start-up with {fault}", exit_code=code, secret_in_log=PASSWORD in logs or wrong_password in logs,
           message=_error_line(logs)[:240])
    message = _error_line(logs)
    assert code == 2, logs[-2000:]
    assert all(n in message for n in names), f"the last word names the setting to fix: {message!r}"
    assert PASSWORD not in logs and wrong_password not in logs


def _error_line(logs: str) -> str:
    """The worker's own one-line verdict (the driver's reconnect warnings come before it)."""
    return next((line for line in reversed(logs.splitlines()) if line.startswith("error:")), "")


def test_kafka_sasl_settings_fail_at_start_up_and_are_masked(
    chaos_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = chaos_settings()
    env = {"INTEREST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "INTEREST_KAFKA_SASL_USERNAME": USER}
    missing = interest(settings, "worker", env=env, timeout=60)
    kafka_secret = "Kafka-" + PASSWORD
    shown = interest(settings, "config", env={**env, "INTEREST_KAFKA_SASL_PASSWORD": kafka_secret})
    report("kafka SASL settings", missing_password_exit=missing.returncode,
           message=_error_line(missing.stderr)[:160], secret_in_config=kafka_secret in shown.stdout)
    assert missing.returncode == 2 and "INTEREST_KAFKA_SASL_PASSWORD" in missing.stderr
    assert shown.returncode == 0 and kafka_secret not in shown.stdout + shown.stderr
    assert "SASL_SSL" in shown.stdout
