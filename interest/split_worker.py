"""``interest worker --split``: the two stages as two processes, each with an event loop of its own.

Why: in one process the ingest stage, the update stage and Faust's per-message work share one
event loop, and the update stage's encode and store threads hold the GIL against it (``bench.profile``:
148 of 230 µs per event on the loop thread).  Split, the ingest process (raw topics -> person topic;
no store, no model) and the update process (person topic -> store) run side by side on two cores.

The parent only supervises: it forwards SIGTERM/SIGINT to both children and, when either child
exits, stops the other and exits with the first one's status, so an orchestrator restarts the pair
(a pod) as one.  Each child is an ordinary ``interest worker`` with ``INTEREST_WORKER_STAGES`` set;
the update child keeps ``INTEREST_WEB_PORT``, the ingest child serves on the port after it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from schemas.settings import Settings

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "SPLIT_WORKER_PARENT_PID"  # not INTEREST_*: unknown settings are refused
CRASH_STOP_WAIT_S = 120.0  # a child died on its own: what the other one gets to stop before SIGKILL


def stop_with_parent() -> None:
    """In a split child, first thing: be sent SIGTERM when the parent dies (Linux; elsewhere a no-op).

    Why: a parent killed alone cannot forward anything, and its children would go on as orphans
    holding the group's partitions next to the pod that replaces them.  In the shipped image the
    parent runs under tini, whose exit takes the container down with it; this is for runs where
    nothing does that (a bare host, a service manager that kills only the main process).  Called by
    the child itself, not through ``preexec_fn`` (not safe in a parent with threads: numpy's), and
    then checked: a parent that died before the call left the child with another parent already.
    """
    expected = os.environ.get(PARENT_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)


def stage_ports(web_port: int, split: bool) -> list[int]:
    """The web ports a worker serves: the update process keeps ``web_port``, a split one's ingest takes the next."""
    return [web_port, web_port + 1] if split else [web_port]


def child_env(settings: Settings, stage: str) -> dict[str, str]:
    """This process's environment with the settings pinned and the stage (and its web port) set."""
    env = settings.child_env()
    env["INTEREST_WORKER_STAGES"] = stage
    env[PARENT_ENV] = str(os.getpid())
    if stage == "ingest" and settings.web_port:
        env["INTEREST_WEB_PORT"] = str(stage_ports(settings.web_port, split=True)[1])
    return env


def seed_ingest_offsets(settings: Settings) -> int:
    """On the first start of a split worker or a batch reader, start the ingest group where the app's group committed.

    Why: the ingest stage has a consumer group of its own (``faust_tuning.raw_group``); without
    this it would start from the raw topics' beginning.  Replays are harmless (duplicates) but a
    retention's worth of them is a long catch-up.  Only raw topics the ingest group has no offset
    for are seeded, so a restart never moves it back.  Returns how many partitions were seeded.
    """
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    from streams.faust_tuning import raw_group
    from streams.kafka_config import kafka_python_options

    ingest_group = raw_group(settings.model_copy(update={"worker_stages": "ingest"}))
    raw = {*settings.raw_topics(), settings.identity_topic}
    admin = KafkaAdminClient(**kafka_python_options(settings), client_id="interest-admin")
    try:
        have = {tp for tp, om in admin.list_group_offsets(ingest_group).get(ingest_group, {}).items()
                if om.offset >= 0}
        theirs = {tp: om.offset for tp, om in admin.list_group_offsets(settings.app_id).get(settings.app_id, {}).items()
                  if tp.topic in raw and om.offset >= 0 and tp not in have}
        if theirs:  # the ingest group has no members yet: its children start after this
            admin.alter_group_offsets(ingest_group, {tp: OffsetAndMetadata(o, "", -1) for tp, o in theirs.items()})
    finally:
        admin.close()
    return len(theirs)


def run_split(settings: Settings) -> int:
    """Start the update and ingest children and supervise them; returns the exit status to use."""
    if settings.worker_stages != "all":
        print("error: --split runs both stages; unset INTEREST_WORKER_STAGES", file=sys.stderr)
        return 2
    try:
        seeded = seed_ingest_offsets(settings)
    except Exception as exc:  # broker not reachable yet: the children wait for it; replays are duplicates
        print(f"interest worker --split: could not seed the ingest group's offsets ({type(exc).__name__}: {exc}); "
              "it starts from the raw topics' beginning", file=sys.stderr)
        seeded = 0
    if seeded:
        print(f"interest worker --split: the ingest group starts from {settings.app_id}'s offsets on {seeded} "
              "raw partitions", file=sys.stderr)
    children = {stage: subprocess.Popen([sys.executable, "-m", "interest.cli", "worker"],
                                        env=child_env(settings, stage))
                for stage in ("update", "ingest")}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    first: int | None = None
    while first is None:
        for stage, child in children.items():
            code = child.poll()
            if code is not None:
                first = code
                if not stopping:
                    print(f"interest worker --split: the {stage} process exited with {code}; stopping the other",
                          file=sys.stderr)
                break
        else:
            time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    # A stop from outside: no deadline of the parent's own.  Each child bounds its stop itself (its batch
    # in flight, then ``stop_grace_s`` for a call that keeps failing) and the orchestrator's grace period
    # bounds the pod (the kubelet, ``docker stop`` and systemd kill every process of it); the 30 s cap this
    # had would SIGKILL a batch still retrying that the pod's 60 s lets finish (tests/deploy: ~42 s).  A child
    # that died on its own: nobody else is counting, so the other one gets CRASH_STOP_WAIT_S.
    for child in children.values():
        try:
            child.wait(timeout=None if stopping else CRASH_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return first if first >= 0 else 128 - first
