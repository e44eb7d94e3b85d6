"""``interest train``, ``interest eval`` and ``interest models ...`` for the project's typer app.

``register(app)`` adds the commands; it imports nothing heavy.  torch,
transformers and onnx are imported inside the command bodies only, so the
worker (which builds the same CLI app) never loads torch just to start.
Every command prints JSON on stdout (one line for ``train``) so scripts can
parse it; progress and logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

DEFAULT_REGISTRY = os.environ.get("INTEREST_REGISTRY", "data/registry")


def _events_source(events: Path | None, movielens: bool) -> Path:
    from model.data import movielens_path

    if movielens:
        return movielens_path()
    if events is None:
        raise typer.BadParameter("give --events FILE or --movielens")
    return events


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def train_cmd(
    events: Path | None = typer.Option(None, "--events", help="CSV / JSON-lines / .inter events file"),
    movielens: bool = typer.Option(
        False, "--movielens", help="Use the MovieLens-100K file shipped with recbole"
    ),
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry", help="Model registry directory"),
    from_version: str | None = typer.Option(None, "--from", help="Warm-start from this published version"),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Max epochs [default: TrainConfig]"),
    seed: int = typer.Option(0, "--seed"),
    dim: int | None = typer.Option(None, "--dim", min=2, help="Interest vector dimension"),
    width: int | None = typer.Option(None, "--width", min=8, help="Transformer hidden width"),
    layers: int | None = typer.Option(None, "--layers", min=1),
    heads: int | None = typer.Option(None, "--heads", min=1),
    max_len: int | None = typer.Option(None, "--max-len", min=2, help="Events per sequence the model reads"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    dropout: float | None = typer.Option(None, "--dropout", min=0.0, max=0.9),
    negatives: int | None = typer.Option(None, "--negatives", help="0 full softmax, N sampled, -1 auto"),
    patience: int | None = typer.Option(None, "--patience", min=1, help="Stop after N epochs without gain"),
    time_budget_s: float | None = typer.Option(None, "--time-budget-s", help="Stop training after this long"),
    time_unit: str | None = typer.Option(None, "--time-unit", help="s|ms|us|ns (default: auto-detect)"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default min(2, cores))"),
    out_plot: Path | None = typer.Option(None, "--out-plot", help="PNG of loss and validation curves"),
    force: bool = typer.Option(False, "--force", help="Publish even if worse than the promoted version"),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Promote the new version"),
    config: str = typer.Option("default", "--config", help="Named configuration: default, movielens, beauty"),
    gate_tolerance: float | None = typer.Option(
        None, "--gate-tolerance", min=0.0,
        help="Accept a candidate this much worse (valid NDCG@10) than the promoted one "
        "[default: INTEREST_QUALITY_GATE_TOLERANCE, 0]",
    ),
    platform: str | None = typer.Option(
        None, "--platform", help="Fine-tune the shared version --from V (default: promoted) on this platform's "
        "targets and publish a platform version",
    ),
    refit: bool | None = typer.Option(
        None, "--refit/--no-refit", help="After choosing the epoch on validation, train that many epochs again "
        "with the validation targets [default: the config's; beauty: on]",
    ),
) -> None:
    """Train (or fine-tune) the encoder, export ONNX, verify, publish; prints one JSON line.

    Unset options take the named configuration (``--config``; ``default`` is
    ``model.trainer.TrainConfig``, tuned on MovieLens-100K; ``beauty`` was chosen
    on Amazon-Beauty's validation target).  With ``--from`` the network shape and feature spec come
    from the parent version and the shape options are ignored.
    """
    from model.registry import ModelRejected, Registry
    from model.trainer import named_config, train

    source = _events_source(events, movielens)
    given: dict[str, Any] = {
        "epochs": epochs,
        "dim": dim,
        "width": width,
        "layers": layers,
        "heads": heads,
        "max_len": max_len,
        "batch_size": batch_size,
        "lr": lr,
        "dropout": dropout,
        "negatives": negatives,
        "patience": patience,
        "time_budget_s": time_budget_s,
        "threads": threads,
        "refit": refit,
    }
    try:
        cfg = named_config(config, seed=seed, **given)
    except ValueError as exc:
        _fail(str(exc))
        return
    tolerance = gate_tolerance if gate_tolerance is not None else _settings(registry).quality_gate_tolerance
    try:
        result = train(
            source,
            registry,
            cfg,
            from_version=from_version,
            time_unit=time_unit,
            out_plot=out_plot,
            force=force,
            promote=promote,
            gate_tolerance=tolerance,
            platform=platform,
        )
    except (ModelRejected, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    summary = result.summary()
    if platform is not None:
        summary.update(platform=platform, parent=Registry(registry).manifest(result.version).get("parent"))
    typer.echo(json.dumps(summary, sort_keys=True))


def eval_cmd(
    events: Path | None = typer.Option(None, "--events", help="CSV / JSON-lines / .inter events file"),
    movielens: bool = typer.Option(
        False, "--movielens", help="Use the MovieLens-100K file shipped with recbole"
    ),
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry"),
    version: str | None = typer.Option(None, "--version", help="Version to evaluate (default: promoted)"),
    target: str = typer.Option("test", "--target", help="test (last event) or valid (the one before)"),
    time_unit: str | None = typer.Option(None, "--time-unit"),
    platform: str | None = typer.Option(None, "--platform", help="Targets: this platform's held-out events, "
                                        "ranked in its catalogue (default version: the platform's promoted one)"),
) -> None:
    """NDCG@10 / HR@10 of a version through the ONNX runtime, with a popularity baseline."""
    from model.data import load_events
    from model.evaluate import evaluate_version
    from model.registry import ModelRejected, Registry

    if target not in ("test", "valid"):
        _fail("--target must be test or valid")
    try:
        people = load_events(_events_source(events, movielens), time_unit)
        if platform is not None and version is None:
            version = Registry(registry).resolve(None, platform)
        report = evaluate_version(
            people, str(registry), version, target="test" if target == "test" else "valid", platform=platform
        )
    except (ModelRejected, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    typer.echo(json.dumps(report, sort_keys=True))


PLATFORM_HELP = "Platform versions (fine-tuned per platform); default: the shared model"


def _summary(manifest: dict[str, Any], promoted: str | None) -> dict[str, Any]:
    out = {
        "version": manifest.get("version"),
        "promoted": manifest.get("version") == promoted,
        "parent": manifest.get("parent"),
        "created": manifest.get("created"),
        "dimension": manifest.get("dimension"),
        "metrics": manifest.get("metrics", {}),
    }
    if manifest.get("platform"):
        out["platform"] = manifest["platform"]
    return out


def models_list(
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry"),
    platform: str | None = typer.Option(None, "--platform", help="Only this platform's versions"),
    every: bool = typer.Option(False, "--all", help="Shared and every platform's versions"),
) -> None:
    """Published versions, oldest first, one JSON object per line (shared ones unless --platform / --all)."""
    from model.registry import ModelRejected, Registry, manifest_platform

    reg = Registry(registry)
    try:
        promoted = {p: reg.promoted(p) for p in {None, platform, *reg.platforms()}}
    except ModelRejected as exc:
        _fail(exc.reason)
        return
    for version in reg.versions():
        try:
            manifest = reg.manifest(version)
        except ModelRejected as exc:
            typer.echo(json.dumps({"version": version, "error": str(exc)}))
            continue
        own = manifest_platform(manifest)
        if every or own == platform:
            typer.echo(json.dumps(_summary(manifest, promoted.get(own)), sort_keys=True))


def models_show(
    version: str = typer.Argument(None, help="Version (default: promoted)"),
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry"),
    verify: bool = typer.Option(False, "--verify", help="Also run the full verification"),
    with_coverage: bool = typer.Option(True, "--coverage/--no-coverage",
                                       help="Count the version's rows in the profile store"),
    platform: str | None = typer.Option(None, "--platform", help="Default version: this platform's promoted one"),
) -> None:
    """A version's manifest (without the bulky reference tensors) and its coverage in the store."""
    from model.registry import ModelRejected, Registry, manifest_platform

    reg = Registry(registry)
    try:
        chosen = reg.resolve(version, platform)
        manifest = reg.verify(chosen) if verify else reg.manifest(chosen)
        pointer = reg.promoted(manifest_platform(manifest))
    except ModelRejected as exc:
        _fail(exc.reason)
        return
    manifest = {k: v for k, v in manifest.items() if k != "reference"}
    manifest["promoted"] = chosen == pointer
    if with_coverage:
        manifest["coverage"] = _coverage(registry, chosen)
    typer.echo(json.dumps(manifest, indent=1, sort_keys=True))


def _settings(registry: Path | None = None) -> Any:
    from interest.common import settings_or_exit

    return settings_or_exit(registry=str(registry) if registry is not None else None)


def _coverage(registry: Path, version: str) -> dict[str, Any]:
    """Share of stored people with a row of ``version`` (store from INTEREST_STORE_URL)."""
    import asyncio

    from interest.query_cmd import _with_store
    from interest.reencode import coverage

    try:
        return dict(asyncio.run(_with_store(_settings(registry), lambda store: coverage(store, version))))
    except Exception as exc:  # the manifest is still worth printing without a store
        return {"version": version, "error": f"{type(exc).__name__}: {exc}"}


def _announce(registry: Path, version: str, action: str, platform: str | None = None) -> dict[str, Any]:
    """Announce on interest.models; failure is reported, not fatal (workers re-check the registry)."""
    from streams.model_watch import announce

    try:
        settings = _settings(registry)
        announce(settings, version, action, None if platform is None else {"platform": platform})
        return {"announced": True}
    except (Exception, typer.Exit) as exc:  # the registry already changed: report, do not fail
        typer.echo(f"warning: could not announce the change ({exc!r}); workers pick it up at their next "
                   "registry check (INTEREST_MODEL_CHECK_INTERVAL_S)", err=True)
        return {"announced": False}


def models_promote(
    version: str = typer.Argument(..., help="Version to promote"),
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry"),
    platform: str | None = typer.Option(None, "--platform", help="Check that the version is this platform's "
                                        "(a platform version always goes to its own platform's pointer)"),
) -> None:
    """Verify and promote a version, and announce it: running workers hot-swap to it."""
    from model.registry import ModelRejected, Registry

    reg = Registry(registry)
    own: str | None = None
    try:
        own = reg.promote(version, platform)
    except ModelRejected as exc:
        _fail(exc.reason)
    extra = {} if own is None else {"platform": own}
    typer.echo(json.dumps({"promoted": version, **extra, **_announce(registry, version, "promote", own)}))


def models_rollback(
    registry: Path = typer.Option(Path(DEFAULT_REGISTRY), "--registry"),
    platform: str | None = typer.Option(None, "--platform", help=PLATFORM_HELP),
) -> None:
    """Re-promote the previously promoted version and announce it: workers swap back."""
    from model.registry import ModelRejected, Registry

    try:
        version = Registry(registry).rollback(platform)
    except ModelRejected as exc:
        _fail(exc.reason)
        return
    extra = {} if platform is None else {"platform": platform}
    typer.echo(json.dumps({"promoted": version, "rolled_back": True, **extra,
                           **_announce(registry, version, "rollback", platform)}))


def trainer_cmd(
    once: bool = typer.Option(False, "--once", help="One round, then exit (CronJob)"),
    every: str | None = typer.Option(None, "--every", help="Run a round every DURATION (90s, 30m, 6h, 1d)"),
    window: str = typer.Option("30d", "--window", help="Train on stored events newer than this"),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Fine-tuning epochs per round"),
    budget: str = typer.Option("9m", "--time-budget", help="Stop a round's training after this long"),
    min_people: int = typer.Option(20, "--min-people", min=1, help="Skip a round with fewer people"),
    max_people: int | None = typer.Option(None, "--max-people", min=1, help="Read at most this many people"),
    force: bool = typer.Option(False, "--force", help="Publish even if the quality gate refuses"),
    registry: Path | None = typer.Option(None, "--registry", help="Registry (default INTEREST_REGISTRY)"),
) -> None:
    """Periodic re-fine-tune: store sequences -> warm-started model -> gate -> publish -> announce.

    With INTEREST_PLATFORMS_SERVED each platform is fine-tuned from the promoted shared version next,
    with its own gate; their outcomes are under ``platforms`` in the printed summary.
    """
    import time

    from interest.periodic import RoundOptions, parse_duration, run_rounds

    if once == (every is not None):
        _fail("give exactly one of --once or --every DURATION")
    try:
        period = parse_duration(every) if every is not None else 0.0
        options = RoundOptions(window_days=parse_duration(window) / 86400, min_people=min_people,
                               max_people=max_people, epochs=epochs, time_budget_s=parse_duration(budget),
                               force=force)
    except ValueError as exc:
        _fail(str(exc))
        return
    settings = _settings(registry)
    while True:
        started = time.monotonic()
        try:
            summary = run_rounds(settings, options)
        except Exception as exc:  # --every must survive a bad round (store down, odd data); --once reports it
            if once:
                raise
            typer.echo(f"error: training round failed: {type(exc).__name__}: {exc}", err=True)
            summary = {"published": False, "error": f"{type(exc).__name__}: {exc}"}
        typer.echo(json.dumps(summary, sort_keys=True, default=str))
        if once:
            return
        pause = max(0.0, period - (time.monotonic() - started))
        typer.echo(f"next round in {pause:.0f}s", err=True)
        time.sleep(pause)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``trainer``, ``eval`` and the ``models`` group to the project's typer app."""
    app.command("train")(train_cmd)
    app.command("trainer")(trainer_cmd)
    app.command("eval")(eval_cmd)
    models = typer.Typer(help="List, inspect, promote and roll back model versions.", no_args_is_help=True)
    models.command("list")(models_list)
    models.command("show")(models_show)
    models.command("promote")(models_promote)
    models.command("rollback")(models_rollback)
    app.add_typer(models, name="models")


def main() -> None:  # pragma: no cover - convenience for `python -m interest.model_cmd`
    app = typer.Typer(no_args_is_help=True)
    register(app)
    app(args=sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
