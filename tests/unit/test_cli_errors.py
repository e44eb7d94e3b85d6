"""A new user's likeliest mistakes get one ``error:`` line saying what to do, exit code 2, never a traceback.

Each case runs the real console entry point (``python -m interest.cli``) in a
fresh directory, as a person would: before any store exists, with no broker
listening, with no model published, with a bad setting, or naming a missing file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from interest.embedded import free_port

NO_BROKER = {"INTEREST_BROKER_URL": "", "INTEREST_KAFKA_BOOTSTRAP_TIMEOUT_MS": "500"}

CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    # (case id, arguments, environment, what the line must mention)
    ("profile-no-store", ["profile", "u1"], {}, "interest store init"),
    ("forget-no-store", ["forget", "u1"], {}, "interest store init"),
    ("similar-no-store", ["similar", "u1", "--version", "v1"], {}, "interest store init"),
    ("recommend-no-model", ["recommend", "u1"], {"init": "1"}, "no promoted model"),
    ("reencode-no-model", ["reencode"], {"init": "1"}, "no promoted model"),
    ("models-show-missing", ["models", "show", "v404"], {}, "v404"),
    ("models-promote-missing", ["models", "promote", "v404"], {}, "v404"),
    ("produce-no-broker", ["produce", "--synthetic", "--events", "5"], NO_BROKER, "interest broker"),
    ("dlq-show-no-broker", ["dlq", "show"], NO_BROKER, "interest broker"),
    ("dlq-replay-no-broker", ["dlq", "replay"], NO_BROKER, "interest broker"),
    ("worker-no-broker", ["worker"], NO_BROKER, "interest broker"),
    ("produce-missing-file", ["produce", "--file", "nope.jsonl", "--platform", "web"], {}, "nope.jsonl"),
    ("train-missing-file", ["train", "--events", "nope.csv"], {}, "nope.csv"),
    ("normalize-unknown-platform", ["normalize", "--platform", "fax"], {}, "fax"),
    ("bad-store-url", ["profile", "u1"], {"INTEREST_STORE_URL": "mysql://db/x"}, "store_url"),
    ("bad-number", ["config"], {"INTEREST_PERSON_PARTITIONS": "0"}, "person_partitions"),
    ("typo-in-setting", ["config"], {"INTEREST_BATCH_SIZ": "10"}, "INTEREST_BATCH_SIZ"),
    ("unknown-command", ["profiles", "u1"], {}, "profiles"),
    ("missing-argument", ["profile"], {}, "person"),
    ("eval-without-data", ["eval"], {}, "--events"),
    ("explain-no-model", ["explain", "u1", "--version", "v1"], {}, "v1"),
]


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_") or k.startswith("INTEREST_TEST_")}
    return subprocess.run([sys.executable, "-m", "interest.cli", *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "env", "mentions"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_mistake_is_one_error_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], mentions: str
) -> None:
    env = dict(env)
    if env.pop("init", None):
        assert _run(["store", "init", "--dim", "8"], {}, tmp_path).returncode == 0
    if env.get("INTEREST_BROKER_URL") == "":
        env["INTEREST_BROKER_URL"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = _run(args, env, tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert mentions in errors[0], errors[0]
    assert "errors.pydantic.dev" not in proc.stderr, "pydantic's web link is noise to a user"
