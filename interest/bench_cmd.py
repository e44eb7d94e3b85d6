"""``interest bench <name> [ARGS...]``: the benchmarks under the one console script.

Each subcommand hands its arguments unchanged to ``bench.<name>.main``, so ``interest bench
throughput --quick`` and ``python -m bench.throughput --quick`` are the same run (and the JSON's
``command`` field names the ``python -m`` form, which works without the console script).
Registered statically by ``interest.cli``.  Why a child process and not an import: ``bench/``
sits above the application layer (it drives the commands), so the command layer runs it as
``python -m bench.<name>`` and never imports it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

BENCHES = {
    "throughput": "catch-up events/s: worker vs Faust pass-through vs naive, and envelopes",
    "freshness": "event produced -> profile readable p50/p95/p99 at fixed rates",
    "broker_hop": "the floor under freshness: one produce -> consume hop through the broker, per 5 s window",
    "broker_fetch": "what one fetch costs on the embedded broker as a partition fills with record batches",
    "store_write": "the SQLite store's write path alone: CPU per person, SQLite's defaults vs the shipped options",
    "encoder": "onnxruntime vs PyTorch eager people/s by batch and sequence length (CUDA when present)",
    "memory": "peak RSS of a worker through a catch-up",
    "quality": "MovieLens-100K NDCG@10 / HR@10 vs popularity, with training time",
    "swap": "freshness p99 during a model hot-swap vs steady state",
    "rolling": "workers replaced one at a time under load, store vs oracle",
    "profile": "where a saturated worker's CPU goes, per event and stage (py-spy), with a flame graph",
    "platforms": "synthetic traffic: platform vs shared vector NDCG@10 per platform, people/s serving 1 vs P+1",
}


def _runner(name: str) -> Callable[[typer.Context], None]:
    def run(ctx: typer.Context) -> None:
        argv = [sys.executable, "-m", f"bench.{name}", *ctx.args]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)

    return run


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Benchmarks: each prints one JSON object as its last stdout line.",
                        no_args_is_help=True)
    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
    for name, summary in BENCHES.items():
        group.command(name, help=f"{summary} (--help: the bench's own options)",
                      context_settings=passthrough)(_runner(name))
    app.add_typer(group, name="bench")
