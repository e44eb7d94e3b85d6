"""Store selection from URLs, the rendered CQL, and ``interest store init``."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from interest.store_cmd import register
from streams.stores.base import StoreError
from streams.stores.cassandra import CassandraStore
from streams.stores.cassandra_config import cassandra_config, render_cql
from streams.stores.factory import open_store
from streams.stores.sqlite import SqliteStore
from testkit.cqlserver import CqlServer
from testkit.cqlserver.fixtures import CQL_PASSWORD, CQL_USER

from .conftest import make_settings, unique_keyspace


def test_sqlite_url(tmp_path: Path) -> None:
    store = open_store(
        make_settings(store_url=f"sqlite:///{tmp_path}/a.db?busy_timeout_ms=7&synchronous=normal")
    )
    assert isinstance(store, SqliteStore)
    assert (store.path, store.busy_timeout_ms, store.synchronous) == (f"{tmp_path}/a.db", 7, "NORMAL")


def test_cassandra_url_options_override_settings() -> None:
    settings = make_settings(
        store_url="cassandra://h1,h2:9142/profiles?dc=eu&consistency=local_one&max_in_flight=32&vector_mode=blob",
        cassandra_local_dc="us",
        cassandra_max_in_flight=128,
        cassandra_username="u",
        cassandra_password="s3cr3t-pw",
    )
    cfg = cassandra_config(settings)
    assert (cfg.hosts, cfg.port, cfg.keyspace) == (["h1", "h2"], 9142, "profiles")
    assert (cfg.local_dc, cfg.consistency, cfg.max_in_flight, cfg.vector_mode) == (
        "eu",
        "LOCAL_ONE",
        32,
        "blob",
    )
    assert (cfg.username, cfg.password) == ("u", "s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(cfg)  # the password never prints
    assert isinstance(open_store(settings), CassandraStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("cassandra://h:9042/ks?consistensy=ONE", "unknown cassandra store_url option 'consistensy'"),
        ("cassandra://h:9042/ks?consistency=TWO", "consistency must be one of"),
        ("cassandra://h:9042/ks?max_in_flight=lots", "bad value 'lots'"),
        ("cassandra://h:9042/ks?vector_mode=fast", "vector_mode must be"),
        ("cassandra://u:pw@h:9042/ks", "not in store_url"),
        ("cassandra://h:9042/bad-name", "bad keyspace name"),
    ],
)
def test_bad_cassandra_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        cassandra_config(make_settings(store_url=url))


def test_rendered_cql_native_and_blob() -> None:
    native = render_cql("ks", "dc1:3,dc2:2", 64, native=True)
    assert native[0].startswith("CREATE KEYSPACE IF NOT EXISTS ks")
    assert "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}" in native[0]
    assert any("embedding     vector<float, 64>" in s for s in native)
    assert sum("StorageAttachedIndex" in s for s in native) == 2
    blob = render_cql("ks", "dc1:3", 64, native=False)
    assert not any("StorageAttachedIndex" in s or "vector<" in s for s in blob)
    assert any("embedding     blob" in s for s in blob)
    assert len(blob) == len(native) - 2
    with pytest.raises(StoreError, match="dc:rf"):
        render_cql("ks", "dc1", 64, native=True)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """interest"""

    register(app)
    return app


def test_store_init_cli_sqlite(tmp_path: Path) -> None:
    env = {"INTEREST_STORE_URL": f"sqlite:///{tmp_path}/cli.db"}
    runner = CliRunner()
    first = runner.invoke(_app(), ["store", "init", "--dim", "16"], env=env)
    assert first.exit_code == 0, first.output
    assert "initialised SQLite store" in first.output and "dim 16" in first.output
    assert runner.invoke(_app(), ["store", "init", "--dim", "16"], env=env).exit_code == 0
    clash = runner.invoke(_app(), ["store", "init", "--dim", "32"], env=env)
    assert clash.exit_code == 2 and "16-dim" in clash.output


def test_store_init_cli_cassandra(cql_server: CqlServer) -> None:
    keyspace = unique_keyspace()
    env = {
        "INTEREST_STORE_URL": cql_server.url(keyspace, protocol_version=4),
        "INTEREST_CASSANDRA_USERNAME": CQL_USER,
        "INTEREST_CASSANDRA_PASSWORD": CQL_PASSWORD,
        "INTEREST_CASSANDRA_REPLICATION": "datacenter1:1",
    }
    result = CliRunner().invoke(_app(), ["store", "init", "--dim", "8"], env=env)
    assert result.exit_code == 0, result.output
    assert f"Cassandra keyspace {keyspace}" in result.output and "SAI ANN" in result.output
    printed = CliRunner().invoke(_app(), ["store", "cql", "--dim", "8", "--blob"], env=env)
    assert printed.exit_code == 0 and f"CREATE TABLE IF NOT EXISTS {keyspace}.profiles" in printed.output
    bad = dict(env, INTEREST_CASSANDRA_PASSWORD="nope")
    failed = CliRunner().invoke(_app(), ["store", "init"], env=bad)
    assert failed.exit_code == 2 and "rejected the login" in failed.output
