"""``interest forget``, ``interest dlq ...`` and ``interest reencode``: operations on stored and queued data."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import typer

from interest.common import settings_or_exit
from interest.query_cmd import _iso, _version, _with_store


def forget(
    person: str,
    broker: Annotated[bool, typer.Option(help="Also tell the owning worker via the person topic")] = True,
) -> None:
    """Erase a person: every version's profile, the sequence, identity links; prints a receipt.

    Exits 0 only when the store erased the person and (unless --no-broker) the owning
    worker was told; otherwise the receipt still prints, then one ``error:`` line and exit 1.
    """
    settings = settings_or_exit()

    # The store covers every stored event of the person, also those dated ahead of this clock.
    receipt = asyncio.run(_with_store(settings, lambda store: store.forget(person, int(time.time() * 1000))))
    notified = False
    if broker:
        from interest.ops import notify_forget

        notified = notify_forget(settings, person, receipt.erased_ms)
    typer.echo(json.dumps({
        "receipt": "erasure", "person_id": receipt.person_id, "erased_at": _iso(receipt.erased_ms),
        "profiles_deleted": receipt.profiles_deleted, "sequence_deleted": receipt.sequence_deleted,
        "links_deleted": receipt.links_deleted, "workers_notified": notified,
        "retention_days": settings.erasure_retention_days,
    }))
    if broker and not notified:
        typer.echo("error: erased in the store, but the owning worker could not be told over the person topic "
                   f"({settings.person_topic}); run `interest forget {person}` again once the broker answers",
                   err=True)
        raise typer.Exit(1)


def dlq_replay(
    reason: Annotated[str | None, typer.Option(help="Only records with this error_class")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many records")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only count what would be replayed")] = False,
) -> None:
    """Re-inject DLQ records into their source topics (after a fix)."""
    from interest.ops import replay_dlq

    settings = settings_or_exit()
    typer.echo(json.dumps(replay_dlq(settings, reason=reason, limit=limit, dry_run=dry_run)))


def dlq_show(limit: Annotated[int, typer.Option(help="Records to show")] = 20) -> None:
    """Print DLQ records (reason, source, raw bytes) as JSON lines."""
    from interest.ops import read_dlq

    for record in read_dlq(settings_or_exit(), limit=limit):
        typer.echo(json.dumps(record))


def reencode(
    version: Annotated[str | None, typer.Option(help="Version to encode with (default: promoted)")] = None,
    page: Annotated[int, typer.Option(min=1, help="People per store page")] = 512,
    max_people: Annotated[int | None, typer.Option(min=1, help="Stop after this many (resume later)")] = None,
    restart: Annotated[bool, typer.Option(help="Ignore a saved cursor and start over")] = False,
    platform: Annotated[str | None, typer.Option(
        "--platform", help="Default version: the platform's promoted one (a row per person of that version)")] = None,
) -> None:
    """Re-encode every stored sequence with one version, resumably, beside the running workers."""
    from interest.reencode import ReencodeProgress, coverage
    from interest.reencode import reencode as run_reencode
    from model.runtime import EncoderRuntime

    settings = settings_or_exit()
    chosen = _version(settings, version, platform)
    runtime = EncoderRuntime.load(settings.registry, chosen, settings.use_gpu)

    def show(p: ReencodeProgress) -> None:
        rate = p.written / p.seconds if p.seconds else 0.0
        typer.echo(f"reencode {p.version}: {p.done}/{p.total} people ({rate:.0f}/s)", err=True)

    async def run(store: Any) -> dict[str, Any]:
        done = await run_reencode(settings, store, runtime, page=page, max_people=max_people,
                                  restart=restart, on_progress=show)
        return {"version": done.version, "complete": done.complete, "reencoded": done.written,
                "resumed_after": done.resumed_after, "seconds": round(done.seconds, 2),
                **{k: v for k, v in (await coverage(store, chosen)).items() if k != "version"}}

    typer.echo(json.dumps(asyncio.run(_with_store(settings, run))))


def register(app: typer.Typer) -> None:
    app.command()(forget)
    dlq_app = typer.Typer(help="Dead-letter queue tools", no_args_is_help=True)
    dlq_app.command("replay")(dlq_replay)
    dlq_app.command("show")(dlq_show)
    app.add_typer(dlq_app, name="dlq")
    app.command()(reencode)
