"""Kafka over SASL_SSL with SCRAM-SHA-512, end to end, configured from settings only.

What a user relies on: pointing the worker at a cluster that requires TLS
and SCRAM is a matter of ``INTEREST_KAFKA_*`` settings; the worker then
consumes and produces as usual; a wrong password or an untrusted CA stops
it at start-up with a message naming the setting to fix (instead of
retrying in silence); and no secret shows in its logs or ``interest config``.

Tansu cannot serve TLS or SCRAM, so a dedicated Tansu sits behind the
test-only ``testkit.kafka_proxy``: the clients (kafka-python in the
producer, aiokafka inside Faust) run their real TLS verification and real
SCRAM code against it, and the proxy counts every connection it authenticated.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from interest.embedded import EmbeddedBroker, free_port
from interest.produce import produce_events
from schemas.settings import Settings
from testkit.chaos import interest, report, synthetic, wait_for_oracle
from testkit.helpers import WorkerProcess
from testkit.kafka_proxy import SecureKafkaProxy

USER = "interest-sasl"
PASSWORD = "Kafka-Scr4m-s3cret-pw"  # distinctive, so a leak is found by a plain substring search
WRONG_PASSWORD = "Wr0ng-" + PASSWORD


@dataclass
class SecureKafka:
    """The proxy in front of its own Tansu, with the CA that signed the proxy's certificate and an unrelated CA."""

    proxy: SecureKafkaProxy
    ca: Path
    untrusted_ca: Path

    @property
    def url(self) -> str:
        return f"kafka://{self.proxy.host}:{self.proxy.port}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(key), "-out", str(cert))
    return cert, key


def _server_cert(directory: Path, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost signed by ``ca``, as an operator's broker certificate would be."""
    cert, key, csr, ext = (directory / n for n in ("broker.pem", "broker.key", "broker.csr", "broker.ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return cert, key


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A dedicated Tansu advertising the proxy's address, so every client connection goes through the proxy."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    directory = tmp_path_factory.mktemp("kafka-tls")
    ca, ca_key = _make_ca(directory, "test-ca")
    untrusted, _ = _make_ca(directory, "untrusted-ca")
    cert, key = _server_cert(directory, ca, ca_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    tansu = EmbeddedBroker(log_file=directory / "tansu.log", advertised_url=f"tcp://127.0.0.1:{port}")
    with tansu, SecureKafkaProxy("127.0.0.1", port, (tansu.host, tansu.port), context, {USER: PASSWORD}) as proxy:
        yield SecureKafka(proxy, ca, untrusted)


def _settings(chaos_settings: Callable[..., Settings], kafka: SecureKafka) -> Settings:
    return chaos_settings(broker_url=kafka.url, kafka_security_protocol="SASL_SSL",
                          kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=USER,
                          kafka_sasl_password=PASSWORD, kafka_ssl_cafile=str(kafka.ca))


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}


def _unauthenticated_metadata_is_refused(kafka: SecureKafka) -> bool:
    """A TLS client that skips SASL and asks for Metadata must be cut off, as a SASL broker does."""
    context = ssl.create_default_context(cafile=str(kafka.ca))
    with socket.create_connection((kafka.proxy.host, kafka.proxy.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        body = struct.pack(">hhih", 3, 1, 1, 5) + b"probe" + struct.pack(">i", -1)  # Metadata v1, all topics
        tls.sendall(struct.pack(">i", len(body)) + body)
        try:
            return tls.recv(4) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True


def test_worker_over_sasl_ssl_scram_matches_the_oracle_and_hides_the_secret(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path,
    secure_kafka: SecureKafka,
) -> None:
    _, version = model_registry
    settings = _settings(chaos_settings, secure_kafka)
    before = secure_kafka.proxy.snapshot()
    traffic = synthetic(users=10, events=80, seed=73)
    with WorkerProcess(settings, tmp_path, name="sasl", INTEREST_LOG_LEVEL="DEBUG") as worker:
        produce_events(settings, traffic.produced)
        wait_for_oracle(settings, version, traffic.oracle, timeout=60)
        logs = worker.logs()
    counts = _delta(secure_kafka.proxy.snapshot(), before)
    refused = _unauthenticated_metadata_is_refused(secure_kafka)
    config = interest(settings, "config")
    config_json = interest(settings, "config", "--json")
    outputs = {"worker log (DEBUG)": logs, "interest config": config.stdout + config.stderr,
               "interest config --json": config_json.stdout + config_json.stderr}
    leaks = [name for name, text in outputs.items() if PASSWORD in text]
    report("kafka SASL_SSL SCRAM-SHA-512 via proxy", profiles=len(traffic.oracle), events=traffic.events,
           **counts, users=dict(secure_kafka.proxy.usernames), unauthenticated_metadata_refused=refused,
           log_bytes=len(logs), leaks=leaks)
    assert counts.get("authenticated", 0) >= 2, counts  # at least the producer and the worker's consumer
    assert counts.get("auth_failed", 0) == counts.get("tls_failed", 0) == counts.get("refused", 0) == 0, counts
    # every connection either authenticated via SCRAM or only asked for ApiVersions and left
    assert counts["connections"] == counts["authenticated"] + counts.get("version_probe_only", 0), counts
    assert set(secure_kafka.proxy.usernames) == {USER}
    assert refused, "the proxy must close a connection that sends Metadata before authenticating"
    assert not leaks, f"the password appears in {leaks}"
    assert config.returncode == 0 and "**********" in config.stdout


@pytest.mark.parametrize("fault", ["wrong_password", "untrusted_ca"])
def test_wrong_password_or_untrusted_ca_fails_at_start_up_naming_the_setting(
    fault: str, chaos_settings: Callable[..., Settings], tmp_path: Path, secure_kafka: SecureKafka
) -> None:
    good = _settings(chaos_settings, secure_kafka)
    if fault == "wrong_password":
        bad = good.model_copy(update={"kafka_sasl_password": SecretStr(WRONG_PASSWORD)})
        names, counter = ["INTEREST_KAFKA_SASL_USERNAME", "INTEREST_KAFKA_SASL_PASSWORD"], "auth_failed"
    else:
        bad = good.model_copy(update={"kafka_ssl_cafile": str(secure_kafka.untrusted_ca)})
        names, counter = ["INTEREST_KAFKA_SSL_CAFILE"], "tls_failed"
    before = secure_kafka.proxy.snapshot()
    worker = WorkerProcess(bad, tmp_path, name=f"bad-{fault}", INTEREST_LOG_LEVEL="DEBUG").start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        worker.stop()
        raise AssertionError(f"the worker kept running with {fault}:\n{worker.logs()[-2000:]}") from None
    logs = worker.logs()
    message = _error_line(logs)
    counts = _delta(secure_kafka.proxy.snapshot(), before)
    report(f"kafka start-up with {fault}", exit_code=code, **{counter: counts.get(counter, 0)},
           authenticated=counts.get("authenticated", 0),
           secret_in_log=PASSWORD in logs or WRONG_PASSWORD in logs, message=message[:240])
    assert code == 2, logs[-2000:]
    assert all(n in message for n in names), f"the last word names the setting to fix: {message!r}"
    assert counts.get(counter, 0) >= 1 and counts.get("authenticated", 0) == 0, counts
    assert PASSWORD not in logs and WRONG_PASSWORD not in logs


def _error_line(logs: str) -> str:
    """The worker's own one-line verdict."""
    return next((line for line in reversed(logs.splitlines()) if line.startswith("error:")), "")
