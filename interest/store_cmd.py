"""``interest store ...``: create the profile store's schema, or print it for a DBA.

Why a separate step: production Cassandra schemas are usually applied by an
operator (keyspace replication is a deployment decision), and workers should
fail fast with "run `interest store init`" instead of silently creating
keyspaces with guessed settings.
"""

from __future__ import annotations

import asyncio

import typer

from schemas.settings import Settings, load_settings
from streams.stores.base import StoreError
from streams.stores.cassandra_config import cassandra_config, render_cql
from streams.stores.factory import opened_store
from streams.stores.sqlite_config import sqlite_target


def _describe(settings: Settings) -> str:
    if settings.store_url.startswith("sqlite"):
        return f"SQLite store at {sqlite_target(settings)[0]}"
    cfg = cassandra_config(settings)
    return f"Cassandra keyspace {cfg.keyspace} at {cfg.where}"


async def init_store(settings: Settings, dim: int) -> str:
    """Apply the schema (idempotent) and say what was initialised."""
    async with opened_store(settings, init_dim=dim) as store:
        mode = getattr(store, "native", None)
        detail = (
            ""
            if mode is None
            else f", vectors as {'vector<float, N> + SAI ANN' if mode else 'float32 blobs'}"
        )
        return f"initialised {_describe(settings)} (dim {dim}{detail})"


def register(app: typer.Typer) -> None:
    """Add the ``store`` command group to the main CLI."""
    store_app = typer.Typer(
        help="Profile store schema (SQLite or Cassandra, from INTEREST_STORE_URL).", no_args_is_help=True
    )

    @store_app.command("init")
    def init(dim: int = typer.Option(64, "--dim", min=1, help="Dimension of the encoder's vectors.")) -> None:
        """Create the keyspace, tables and indexes if missing (safe to run again)."""
        try:
            typer.echo(asyncio.run(init_store(load_settings(), dim)))
        except (StoreError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc

    @store_app.command("cql")
    def cql(
        dim: int = typer.Option(64, "--dim", min=1, help="Dimension of the encoder's vectors."),
        blob: bool = typer.Option(False, "--blob", help="Cassandra 4.x fallback: vectors as blobs, no SAI."),
    ) -> None:
        """Print the CQL that `store init` applies, for review or `cqlsh -f`."""
        try:
            cfg = cassandra_config(load_settings())
        except (StoreError, ValueError) as exc:
            typer.echo(f"error: {exc} (store cql needs a cassandra:// INTEREST_STORE_URL)", err=True)
            raise typer.Exit(2) from exc
        for statement in render_cql(cfg.keyspace, cfg.replication, dim, native=not blob):
            typer.echo(statement + ";\n")

    app.add_typer(store_app, name="store")
