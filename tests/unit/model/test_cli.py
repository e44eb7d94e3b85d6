"""The `interest train / eval / models ...` commands, through a local typer app."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from interest.model_cmd import register
from model.registry import Registry


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)
    return application


@pytest.fixture(scope="module")
def events_csv(tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]]) -> Path:
    path = tmp_path_factory.mktemp("cli") / "events.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["user_id", "item_id", "timestamp", "action", "platform"])
        writer.writeheader()
        for e in events:
            writer.writerow(
                {**{k: e[k] for k in ("user_id", "item_id", "action", "platform")}, "timestamp": e["ts_ms"]}
            )
    return path


TINY = [
    "--epochs",
    "2",
    "--dim",
    "8",
    "--width",
    "16",
    "--layers",
    "1",
    "--max-len",
    "12",
    "--batch-size",
    "16",
    "--threads",
    "1",
]


def test_train_eval_and_models_commands(app: typer.Typer, events_csv: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    reg = tmp_path / "reg"
    plot = tmp_path / "curves.png"
    res = runner.invoke(
        app,
        [
            "train",
            "--events",
            str(events_csv),
            "--registry",
            str(reg),
            "--seed",
            "1",
            "--out-plot",
            str(plot),
            *TINY,
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, "train prints exactly one JSON line on stdout"
    summary = json.loads(lines[0])
    version = summary["version"]
    assert summary["promoted"] is True and summary["metrics"]["valid"]["users"] == 80
    assert "epoch" in res.stderr  # progress goes to stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = runner.invoke(app, ["eval", "--events", str(events_csv), "--registry", str(reg)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["version"] == version
    assert set(report) >= {"ndcg@10", "hr@10", "users", "popularity"}
    assert report["ndcg@10"] == pytest.approx(summary["metrics"]["test"]["ndcg@10"], abs=1e-6)

    res = runner.invoke(
        app,
        ["train", "--events", str(events_csv), "--registry", str(reg), "--from", version, "--force", *TINY],
    )
    assert res.exit_code == 0, res.output
    second = json.loads(res.stdout)["version"]

    listed = [
        json.loads(line)
        for line in runner.invoke(app, ["models", "list", "--registry", str(reg)]).stdout.splitlines()
    ]
    assert [m["version"] for m in listed] == [version, second]
    assert [m["promoted"] for m in listed] == [False, True]

    shown = json.loads(runner.invoke(app, ["models", "show", second, "--registry", str(reg)]).stdout)
    assert shown["parent"] == version and "reference" not in shown

    res = runner.invoke(app, ["models", "rollback", "--registry", str(reg)])
    assert res.exit_code == 0 and json.loads(res.stdout)["promoted"] == version
    assert Registry(reg).promoted() == version
    res = runner.invoke(app, ["models", "promote", second, "--registry", str(reg)])
    assert res.exit_code == 0 and Registry(reg).promoted() == second


def test_errors_are_clear_and_nonzero(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["models", "promote", "v-missing", "--registry", str(tmp_path)])
    assert res.exit_code == 2 and "no manifest" in res.stderr
    res = runner.invoke(app, ["eval", "--events", str(tmp_path / "nope.csv"), "--registry", str(tmp_path)])
    assert res.exit_code == 2 and "not found" in res.stderr
    res = runner.invoke(app, ["models", "rollback", "--registry", str(tmp_path)])
    assert res.exit_code == 2 and "nothing to roll back" in res.stderr
