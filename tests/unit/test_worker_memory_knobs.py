"""What bounds a worker's memory in a catch-up: Faust's stream buffer and glibc's malloc arenas.

``bench.memory`` measures the effect (peak RSS of a 200 000-event catch-up); these keep the choices
it rests on.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from interest.worker_cmd import limit_malloc_arenas
from schemas.settings import Settings
from streams.faust_tuning import lean_app, stream_buffer


def test_with_the_batch_reader_faust_buffers_two_update_batches_of_envelopes_not_4096() -> None:
    batch = Settings(update_batch_envelopes=100)
    assert stream_buffer(batch, reads_raw=False) == 200
    assert lean_app(batch).conf.stream_buffer_maxsize == 200


def test_a_faust_agent_on_the_raw_topics_keeps_the_large_buffer() -> None:
    faust_reader = Settings(ingest_reader="faust", batch_size=3000)
    assert lean_app(faust_reader).conf.stream_buffer_maxsize == 6000
    update_only = Settings(ingest_reader="faust", worker_stages="update", update_batch_envelopes=100)
    assert lean_app(update_only).conf.stream_buffer_maxsize == 200  # it reads the person topic only


# A fresh process: threads that allocate at once, then glibc's own report of its heaps (one per arena).
ARENAS = """
import ctypes, sys, tempfile, threading
from interest.worker_cmd import limit_malloc_arenas
applied = limit_malloc_arenas(int(sys.argv[1]))
def churn():
    for _ in range(200):
        junk = [bytearray(4096) for _ in range(200)]
        del junk
threads = [threading.Thread(target=churn) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(applied, out.read().count("<heap nr="))
"""


def _arenas(cap: int) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", ARENAS, str(cap)], capture_output=True, text=True, env=env,
                         check=True, timeout=60).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_arena_cap_holds_threads_that_allocate_at_once_to_it() -> None:
    applied, capped = _arenas(1)
    assert (applied, capped) == ("True", 1)
    _, free = _arenas(0)  # glibc's default: the threads got arenas of their own
    assert free > 1


def test_zero_leaves_glibcs_default() -> None:
    assert limit_malloc_arenas(0) is False
