"""``bench.runs.cpu_seconds``: the CPU a process (and, if asked, its children) used, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.runs import cpu_seconds


def test_counts_this_process_and_a_busy_child() -> None:
    before_own = cpu_seconds(os.getpid(), children=False)
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of CPU here
        pass
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\nprint('burnt', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"  # 0.5 s burnt; it sleeps, alive
        # Read together: under pytest this process may have other children too (a session's embedded broker).
        with_children, own, child_cpu = (cpu_seconds(os.getpid()), cpu_seconds(os.getpid(), children=False),
                                         cpu_seconds(child.pid))
    finally:
        child.kill()
        child.wait()
    assert own - before_own >= 0.28, own - before_own  # its own threads (/proc counts in 10 ms ticks)
    assert child_cpu >= 0.48, child_cpu
    assert with_children - own >= child_cpu - 0.02, (with_children, own, child_cpu)  # the child is included


def test_a_gone_process_has_used_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu_seconds(proc.pid) == 0.0
