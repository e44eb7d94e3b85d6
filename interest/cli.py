"""``interest``: the one console script; every subcommand lives under it.

Heavy dependencies load inside commands, so ``interest --help`` and the
worker never import torch (model commands import it when they run).
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from interest import bench_cmd, model_cmd, ops_cmd, query_cmd, store_cmd, ui, worker_cmd
from interest.common import first_line, settings_or_exit, user_error

app = typer.Typer(
    name="interest",
    help="Streaming real-time user-interest updater: Kafka -> Faust -> ONNX encoder -> profile store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Print the effective settings (environment INTEREST_*), secrets masked."""
    masked = settings_or_exit().masked()
    if as_json:
        typer.echo(json.dumps(masked, indent=2, default=str))
        return
    width = max(len(k) for k in masked)
    for key, value in masked.items():
        typer.echo(f"{key.ljust(width)}  {value}")


@app.command()
def normalize(
    platform: Annotated[str, typer.Option(help="Platform whose raw format the lines use")],
    dlq: Annotated[Path | None, typer.Option(help="Write rejected lines here as JSON")] = None,
    action: Annotated[str | None, typer.Option(help="Action when the line names none (topic action)")] = None,
    adapters_dir: Annotated[Path | None, typer.Option(help="Extra platform mappings (*.json)")] = None,
) -> None:
    """Raw JSON lines on stdin -> canonical JSON lines on stdout; rejects go to --dlq.

    Never stops on a bad line; exits 0 unless its own arguments are wrong.
    """
    from schemas.adapters import AdapterConfigError, load_adapters
    from schemas.normalize import Normalizer

    try:
        adapters = load_adapters(adapters_dir)
    except AdapterConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if platform not in adapters:
        typer.echo(f"error: unknown platform {platform!r} (known: {', '.join(sorted(adapters))})", err=True)
        raise typer.Exit(2)
    normalizer = Normalizer(adapters)
    seen: dict[str, int] = {}
    out = sys.stdout.buffer
    dlq_fh = open(dlq, "wb") if dlq else None  # noqa: SIM115
    good = bad = 0
    try:
        for lineno, line in enumerate(sys.stdin.buffer, start=1):
            raw = line.rstrip(b"\r\n")
            decoded = normalizer.decode(raw, platform, action)
            rejects = list(decoded.rejected)
            for event in decoded.events:
                first = seen.get(event.event_id)
                if first is not None:
                    from schemas.events import Rejected

                    msg = f"duplicate event_id {event.event_id!r} (first seen on line {first})"
                    rejects.append((Rejected("duplicate_event_id", msg), raw))
                    continue
                seen[event.event_id] = lineno
                out.write(orjson.dumps(event.to_dict()) + b"\n")
                good += 1
            for why, _ in rejects:
                bad += 1
                record = {"line": lineno, "reason": why.reason, "error": str(why),
                          "raw": raw.decode("utf-8", errors="backslashreplace"),
                          "raw_b64": base64.b64encode(raw).decode()}
                if dlq_fh:
                    dlq_fh.write(orjson.dumps(record) + b"\n")
                else:
                    typer.echo(f"line {lineno}: {why}", err=True)
    finally:
        if dlq_fh:
            dlq_fh.close()
        out.flush()
    typer.echo(f"normalized {good} events, rejected {bad}", err=True)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Loopback port")] = 9092,
) -> None:
    """Run the embedded Tansu broker (memory storage) in the foreground."""
    import signal
    import threading

    from interest.embedded import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as b:
        typer.echo(f"embedded broker on {b.url} (memory storage: data is lost on stop); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@app.command()
def produce(
    broker: Annotated[str | None, typer.Option(help="Kafka bootstrap, e.g. kafka://127.0.0.1:9092")] = None,
    file: Annotated[Path | None, typer.Option(help="Raw platform events, one JSON per line")] = None,
    platform: Annotated[str | None, typer.Option(help="Platform of --file")] = None,
    synthetic: Annotated[bool, typer.Option(help="Generate multi-platform traffic")] = False,
    users: Annotated[int, typer.Option(help="Synthetic people")] = 1000,
    items: Annotated[int, typer.Option(help="Synthetic items")] = 2000,
    events: Annotated[int, typer.Option(help="Synthetic events")] = 10_000,
    rate: Annotated[float | None, typer.Option(help="Events per second (default: as fast as possible)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    envelope: Annotated[int, typer.Option(help="Events per message (tracker batching)")] = 1,
) -> None:
    """Send raw events to events.<platform>.<action> topics, keyed by platform user id."""
    import time

    from interest.produce import ensure_topics, input_topics, make_producer, produce_events, raw_lines

    settings = settings_or_exit(broker_url=broker)
    if synthetic == (file is not None):
        typer.echo("error: give exactly one of --synthetic or --file F --platform P", err=True)
        raise typer.Exit(2)
    if file is not None:
        if not file.is_file():
            typer.echo(f"error: no such file: {file}", err=True)
            raise typer.Exit(2)
        if not platform:
            typer.echo("error: --file needs --platform", err=True)
            raise typer.Exit(2)
        ensure_topics(settings, input_topics(settings))
        prod = make_producer(settings)
        count = 0
        with typer.progressbar(length=0, label="producing", show_pos=True) as bar:
            for topic, value, key in raw_lines(str(file), platform, settings):
                prod.send(topic, key=key, value=value)
                count += 1
                bar.update(1)
        prod.flush()
        prod.close()
        typer.echo(json.dumps({"produced": count, "file": str(file)}))
        return
    from interest.synthetic import SyntheticTraffic
    from schemas.adapters import load_adapters

    adapters = {p: a for p, a in load_adapters().items() if p in settings.platforms}
    traffic = SyntheticTraffic(adapters, users=users, items=items, seed=seed)
    step = 1000.0 / rate if rate else 5.0
    start_ms = int(time.time() * 1000) - (0 if rate else int(events * step))
    with typer.progressbar(length=events, label="producing", show_pos=True) as bar:
        sent = produce_events(settings, traffic.events(events, start_ms, step), rate=rate, envelope=envelope,
                              on_progress=bar.update)
    typer.echo(json.dumps({"produced": sent, "users": users, "seed": seed, "envelope": envelope}))


for _register in (worker_cmd.register, worker_cmd.register_demo, query_cmd.register, ops_cmd.register,
                  store_cmd.register,
                  model_cmd.register, ui.register, bench_cmd.register):
    _register(app)


def main() -> None:
    """Run the CLI; a user's mistake ends as one ``error:`` line and exit code 2, a bug as a traceback."""
    # typer ships its own copy of click: take its exception classes from typer's own.
    click_errors: dict[str, type[Exception]] = {c.__name__: c for c in typer.BadParameter.__mro__
                                                  if issubclass(c, Exception)}
    usage_error, click_exception = click_errors["UsageError"], click_errors["ClickException"]
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {first_line(exc)}{hint}", err=True)
        sys.exit(2)
    except click_exception as exc:
        typer.echo(f"error: {first_line(exc)}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
