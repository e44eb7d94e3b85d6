"""Every `interest ...` invocation in deploy/ names a real subcommand and real options.

The deploy files (compose commands, Kubernetes args, Dockerfile CMDs) call the console
script; a renamed option would only show up when a container starts. A subcommand that
does not exist yet is reported as a skip naming it (the contract others are building),
an existing subcommand with an unknown option fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _argv_from_k8s() -> list[tuple[str, list[str]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in ("Deployment", "Job", "CronJob"):
                continue
            spec = doc["spec"]
            if doc["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            for container in spec["template"]["spec"]["containers"]:
                if "args" in container:
                    out.append((f"{path.relative_to(ROOT)}:{container['name']}", list(container["args"])))
    return out


def _argv_from_compose() -> list[tuple[str, list[str]]]:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return [
        (f"docker-compose.yml:{name}", [str(a) for a in svc["command"]])
        for name, svc in doc["services"].items()
        if str(svc.get("image", "")).startswith("interest-") and "command" in svc
    ]


def _argv_from_dockerfiles() -> list[tuple[str, list[str]]]:
    out = []
    for path in sorted(DEPLOY.glob("Dockerfile.*")):
        if path.suffix == ".dockerignore":
            continue
        cmds = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
        if cmds:
            out.append((path.name, [str(a) for a in yaml.safe_load(cmds[-1][4:])]))
    return out


INVOCATIONS = _argv_from_k8s() + _argv_from_compose() + _argv_from_dockerfiles()


def test_invocations_were_found() -> None:
    seen = {tuple(argv[:1]) for _, argv in INVOCATIONS}
    assert {("worker",), ("store",), ("trainer",)} <= seen


@pytest.fixture(scope="module")
def cli() -> Any:
    typer_main = pytest.importorskip("typer.main")
    from streams.cli import app

    return typer_main.get_command(app)


@pytest.mark.parametrize("where,argv", INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_invocation_matches_the_cli(where: str, argv: list[str], cli: Any) -> None:
    command = cli
    words = list(argv)
    path: list[str] = []
    while words and not words[0].startswith("-") and hasattr(command, "commands"):
        name = words.pop(0)
        path.append(name)
        if name not in command.commands:
            pytest.skip(f"`interest {' '.join(path)}` is not implemented yet (used by {where})")
        command = command.commands[name]
    opts = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in opts, f"{where}: `interest {' '.join(path)}` has no option {option}"
