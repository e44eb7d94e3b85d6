"""One retry policy for every loop that must not give up: exponential backoff with a cap.

Why one helper: a failing broker send, a store that is down and a store open
at start-up all hold the partition the same way (wait, retry, never commit
past), and three hand-written loops drifted apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("interest.worker")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays in seconds: ``first_s``, doubling, never above ``max_s``."""

    first_s: float
    max_s: float

    @classmethod
    def from_ms(cls, first_ms: int, max_ms: int) -> Backoff:
        return cls(first_ms / 1000, max_ms / 1000)

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


async def retry_forever(what: str, backoff: Backoff, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await ``fn(*args)`` until it succeeds; each failure is logged and waited out."""
    for delay in backoff.delays():
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # delays() never ends
