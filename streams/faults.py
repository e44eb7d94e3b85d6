"""Fault-injection points for the chaos tests; inert unless a test arms one.

Why it exists: "kill -9 between the store write and the offset commit" cannot
be timed from outside a process, so the worker names its critical points and
a test arms one through the environment:

    INTEREST_TEST_CRASH_AT=<point>[:<nth>]

makes the process SIGKILL itself on the ``nth`` pass (default 1) through that
point: no ``finally`` blocks, no flush, no commit, exactly like ``kill -9`` or
the OOM killer.  Points: ``before_write`` and ``after_write`` (around the
store write of a batch, in ``streams.updater``), ``between_writes`` (between
the two phases of a Cassandra batch write, in ``streams.stores.cassandra``),
``after_commit`` (the update agent, once the previous batches' offsets were
acknowledged and committed), ``ingest_before_commit`` and
``ingest_after_commit`` (the batch reader, around its raw offsets' commit, its
envelopes already acknowledged).  ``INTEREST_TEST_POISON=<person>`` makes the
update of that person raise every time (a bug that a later deploy fixes).
``INTEREST_TEST_*`` variables are not settings, so the unknown-setting check
ignores them; they are read once at import, so without them every call is one
comparison.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

ENV = "INTEREST_TEST_CRASH_AT"
POISON_ENV = "INTEREST_TEST_POISON"
_passes: dict[str, int] = {}


def armed_point() -> tuple[str, int] | None:
    """``(point, nth)`` named by the environment, or None."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth) if nth else 1


# Read once: the worker calls these on its hot path, and a test arms them before the process starts.
_ARMED = armed_point()
_POISONED = os.environ.get(POISON_ENV) or None


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point and this is its nth pass."""
    target = _ARMED
    if target is None or target[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= target[1]:
        sys.stderr.write(f"fault injection: SIGKILL at {name} (pass {_passes[name]})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


async def commit_then_crash(app: Any, name: str = "after_commit") -> None:
    """When ``name`` is armed: commit the acknowledged offsets now, then pass ``crash_point``.

    Faust commits on a 1 s timer; forcing the commit makes "killed right after
    a commit" a deterministic point instead of a race with that timer.
    """
    if _ARMED is None or _ARMED[0] != name:
        return
    await app.consumer.commit()
    crash_point(name)


class InjectedBug(RuntimeError):
    """The deterministic failure ``fail_if_poisoned`` raises."""


def fail_if_poisoned(person_id: str) -> None:
    """Raise for the person named by ``INTEREST_TEST_POISON``: a code bug that fails every time.

    A test arms it, sees the person's records reach the DLQ, then restarts
    the worker without it ("the fix is deployed") and replays the DLQ.
    """
    if _POISONED is not None and person_id == _POISONED:
        raise InjectedBug(f"injected bug for person {person_id} ({POISON_ENV})")
