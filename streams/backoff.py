"""One retry policy for every loop that must not give up: exponential backoff with a cap.

Why one helper: a failing broker send, a store that is down and a store open
at start-up all hold the partition the same way (wait, retry, never commit
past), and three hand-written loops drifted apart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("interest.worker")

# Exit status of a worker that stopped while a call kept failing (EX_TEMPFAIL): nothing of the
# batch in flight was committed, so the next owner redoes it, exactly as after a kill -9.
EXIT_ABANDONED = 75


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays in seconds: ``first_s``, doubling, never above ``max_s``.

    ``stopping`` says the worker was told to stop (SIGTERM).  Faust cancels its
    agents only once the batch in flight is acknowledged, so a loop that keeps
    failing would outlive the grace period and be SIGKILLed.  Instead, once
    stopping, a call that still fails after ``stop_grace_s`` ends the process
    at once without committing (``EXIT_ABANDONED``): a slow store gets the
    grace to recover, a dead one does not hold the shutdown.
    """

    first_s: float
    max_s: float
    stopping: Callable[[], bool] = _never
    stop_grace_s: float = 20.0
    _stop_seen: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_ms(cls, first_ms: int, max_ms: int, stopping: Callable[[], bool] = _never,
                stop_grace_s: float = 20.0) -> Backoff:
        return cls(first_ms / 1000, max_ms / 1000, stopping, stop_grace_s)

    def after_failure(self, what: str, exc: BaseException, delay: float) -> float:
        """The delay to wait before the next try; exits the process if stopping and out of grace."""
        if not self.stopping():
            return delay
        started = self._stop_seen.setdefault("at", time.monotonic())
        left = self.stop_grace_s - (time.monotonic() - started)
        if left <= 0:
            log.error("told to stop while %s keeps failing (%s): exiting without committing the batch in flight; "
                      "the next owner redoes it", what, exc)
            logging.shutdown()
            os._exit(EXIT_ABANDONED)
        return min(delay, left)

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


async def retry_forever(what: str, backoff: Backoff, fn: Callable[..., Awaitable[Any]], *args: Any,
                        fatal: Callable[[Exception], bool] | None = None) -> Any:
    """Await ``fn(*args)`` until it succeeds; each failure is logged and waited out.

    ``fatal`` names the errors that cannot succeed however often they are
    retried (a message larger than the producer allows): those are raised
    at once, for the caller to split or dead-letter, instead of holding the
    partition forever.  Cancellation is never retried: the sleep is a plain
    ``asyncio.sleep`` and ``CancelledError`` passes straight through.  Faust
    cancels agents only after the in-flight batch is acknowledged, so a
    stopping worker gives up through ``Backoff.after_failure`` instead.
    """
    for delay in backoff.delays():
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if fatal is not None and fatal(exc):
                raise
            delay = backoff.after_failure(what, exc, delay)
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # delays() never ends
