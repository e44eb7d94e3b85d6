"""Every `interest ...` invocation in deploy/ names a real subcommand and real options.

The deploy files (compose commands, Kubernetes args, Dockerfile CMDs) call the console
script; a renamed option would only show up when a container starts. A subcommand that
that does not exist fails naming it, and so does an existing subcommand with an unknown option.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


def _argv_from_readme() -> list[tuple[str, list[str]]]:
    """Commands deploy/README.md tells an operator to type: `interest ...`, `run --rm trainer ...`, Job args."""
    text = (DEPLOY / "README.md").read_text()
    found: list[list[str]] = []
    found += [m.split() for m in re.findall(r"`interest ([^`]+)`", text)]
    found += [m.split() for m in re.findall(r"run --rm trainer ([^`#\n]+)", text)]
    found += [json.loads(m) for m in re.findall(r"args = (\[[^\]]*\])", text)]
    out: list[tuple[str, list[str]]] = []
    for argv in found:
        words = [w.rstrip(".,") for w in argv]
        cut = next((i for i, w in enumerate(words) if "<" in w or "|" in w), len(words))
        if words[:cut] and re.fullmatch(r"[a-z][\w-]*", words[0]):  # not prose such as `interest ...`
            where = f"deploy/README.md:{' '.join(words[:cut])}"
            if where not in {w for w, _ in out}:
                out.append((where, words[:cut]))
    return out


INVOCATIONS = _argv_from_k8s() + _argv_from_compose() + _argv_from_dockerfiles() + _argv_from_readme()


def test_invocations_were_found() -> None:
    seen = {tuple(argv[:1]) for _, argv in INVOCATIONS}
    assert {("worker",), ("store",), ("trainer",), ("models",)} <= seen
    assert any(where.startswith("deploy/README.md") for where, _ in INVOCATIONS)


@pytest.fixture(scope="module")
def cli() -> Any:
    typer_main = pytest.importorskip("typer.main")
    from interest.cli import app

    return typer_main.get_command(app)


@pytest.mark.parametrize("where,argv", INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_invocation_matches_the_cli(where: str, argv: list[str], cli: Any) -> None:
    command = cli
    words = list(argv)
    path: list[str] = []
    while words and not words[0].startswith("-") and hasattr(command, "commands"):
        name = words.pop(0)
        path.append(name)
        assert name in command.commands, f"`interest {' '.join(path)}` does not exist (used by {where})"
        command = command.commands[name]
    opts = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in opts, f"{where}: `interest {' '.join(path)}` has no option {option}"


def _command_paths() -> list[list[str]]:
    """Distinct subcommand paths (the words before the first option) used by deploy/."""
    paths: dict[tuple[str, ...], None] = {}
    for _, argv in INVOCATIONS:
        words = []
        for word in argv:
            if word.startswith("-"):
                break
            words.append(word)
        paths[tuple(words)] = None
    return [list(p) for p in paths]


def _console_script() -> list[str]:
    """The `interest` entry point the images run (`ENTRYPOINT tini -- interest`)."""
    beside = Path(sys.executable).parent / "interest"
    exe = shutil.which("interest") or (str(beside) if beside.exists() else None)
    return [exe] if exe else [sys.executable, "-m", "interest.cli"]


def test_the_console_script_lists_every_subcommand_deploy_uses() -> None:
    """The real entry point, not the Typer object: `interest --help` names each top-level subcommand.

    One process (importing the CLI costs seconds); the options of each subcommand are checked
    in-process above. A subcommand missing from the help fails naming it.
    """
    proc = subprocess.run([*_console_script(), "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^[│|]?\s+([a-z][\w-]*)\s", proc.stdout, flags=re.M))
    used = sorted({argv[0] for _, argv in INVOCATIONS if argv})
    missing = [name for name in used if name not in listed]
    assert not missing, f"not in `interest --help`: {', '.join(missing)} (used by deploy/)"
