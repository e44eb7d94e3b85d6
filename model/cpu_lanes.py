"""Running one onnxruntime call over several cores: batch lanes, and denormals flushed on every thread.

Why lanes: the encoder's graph is many small kernels.  onnxruntime splits
each kernel across its intra-op threads and joins them again (one wake-up
per kernel, no spinning in a worker), which at batch 256 turned one
thread's 9 300 people/s into 13 200 on two.  Cutting the batch into
contiguous lanes that run whole graphs side by side (``InferenceSession.run``
is thread-safe and releases the GIL), each on one intra-op thread, reached
18 000 on the same two cores, with the same numbers row by row.

Why denormals: masked attention scores go through ``exp`` far below the
smallest normal float, and onnxruntime's kernels slow down several times on
the denormal results.  Its ``session.set_denormal_as_zero`` is not used: it
covers its pool threads (a lane's session has none) and, once per process,
the thread that makes the first session, which would change the floating-
point mode of whatever application thread loads a model.  Every call runs
on the lane pool instead, whose threads set flush-to-zero and
denormals-are-zero themselves (:func:`flush_denormals`; x86-64, elsewhere
nothing).  Values below 1.2e-38 become 0: the runtime's vectors stay within
the 1e-4 parity of ``model.forward`` (``tests/unit/model/test_runtime.py``),
and are identical however a call is split.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

LANE_MIN_ROWS = 32  # below this many rows per lane the split costs more than it saves
_MXCSR_OFFSET, _FENV_SIZE = 28, 32  # x86-64 glibc ``fenv_t``: x87 environment, then the SSE control word
_FTZ_DAZ = 0x8040  # MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6)

_local = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


@functools.cache
def _libm() -> ctypes.CDLL | None:
    """glibc's (or musl's) libm, loaded once: by its soname first, so no lane start runs ``ldconfig``."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        return ctypes.CDLL("libm.so.6")
    except OSError:
        pass
    name = ctypes.util.find_library("m")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def flush_denormals() -> bool:
    """Set FTZ and DAZ on the calling thread (once per thread); True when they are set."""
    done = getattr(_local, "flushed", None)
    if done is not None:
        return bool(done)
    libm = _libm()
    ok = False
    if libm is not None:
        env = (ctypes.c_ubyte * _FENV_SIZE)()
        if libm.fegetenv(env) == 0:
            word = int.from_bytes(bytes(env[_MXCSR_OFFSET:_FENV_SIZE]), "little") | _FTZ_DAZ
            env[_MXCSR_OFFSET:_FENV_SIZE] = list(word.to_bytes(4, "little"))
            ok = libm.fesetenv(env) == 0
    _local.flushed = ok
    return ok


def _lane_thread() -> None:
    _local.lane = True
    flush_denormals()


def lane_pool() -> ThreadPoolExecutor:
    """One process-wide pool for every runtime (versions are swapped; their lanes are not leaked)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ort-lane", initializer=_lane_thread)
        return _pool


def lane_count(rows: int, lanes: int) -> int:
    """How many lanes a call of ``rows`` rows uses: at most ``lanes``, each of at least LANE_MIN_ROWS."""
    return max(1, min(lanes, rows // LANE_MIN_ROWS))


def run_in_lanes(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray],
                 lanes: int) -> np.ndarray:
    """``run(feeds)`` with the rows cut into contiguous lanes run side by side; rows come back in order.

    Every call runs on the lane pool, whose threads flush denormals (one lane below ``2 * LANE_MIN_ROWS``
    rows), so results do not depend on the caller's thread, and the caller's floating-point mode is never
    touched.  Called from a lane thread itself, it runs there: waiting on its own pool could deadlock.
    """
    if getattr(_local, "lane", False):
        return run(feeds)
    rows = len(next(iter(feeds.values())))
    bounds = np.linspace(0, rows, lane_count(rows, lanes) + 1).astype(int)
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    futures = [lane_pool().submit(run, {name: value[lo:hi] for name, value in feeds.items()}) for lo, hi in spans]
    return np.concatenate([f.result() for f in futures], axis=0)
