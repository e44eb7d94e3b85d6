"""What a child process (a ``--split`` stage, a bench's worker) inherits from its parent's environment.

Why it matters: the children are started from ``Settings.child_env``.  Settings are pinned (an operator's
stale ``INTEREST_*`` must not come back in a child), but the ``INTEREST_TEST_*`` fault hooks are not
settings: when they were dropped, a crash armed for a split worker never fired in the stage that has the
crash point, and the chaos suite could not kill one process of the pair.
"""

from __future__ import annotations

import os

import pytest

from interest.split_worker import PARENT_ENV, child_env
from schemas.settings import Settings


def test_settings_are_pinned_and_test_hooks_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_TEST_CRASH_AT", "before_write:3")
    monkeypatch.setenv("INTEREST_BATCH_SIZE", "7")  # the parent's environment, overridden by the settings below
    monkeypatch.setenv("PATH_LIKE_OTHER", "kept")
    settings = Settings(batch_size=300, web_port=9100)

    env = child_env(settings, "update")

    assert env["INTEREST_TEST_CRASH_AT"] == "before_write:3"
    assert env["INTEREST_BATCH_SIZE"] == "300"
    assert env["PATH_LIKE_OTHER"] == "kept"
    assert env["INTEREST_WORKER_STAGES"] == "update"
    assert env["INTEREST_WEB_PORT"] == "9100"
    assert child_env(settings, "ingest")["INTEREST_WEB_PORT"] == "9101"
    assert env[PARENT_ENV] == str(os.getpid())  # how a child checks it still has the parent that started it


def test_an_unknown_setting_of_the_parent_does_not_reach_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_NOT_A_SETTING", "x")
    assert "INTEREST_NOT_A_SETTING" not in Settings().child_env()
