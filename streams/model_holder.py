"""Which encoder a worker uses now; new versions are loaded, checked and warmed off the event loop.

The holder is read once per batch (``current()``), so a swap takes effect
between two batches and never inside one: every profile row of a batch
carries the version that really produced its vector.

Why load in the background: verification (sha256, shapes, NaN/Inf, parity
with the manifest's reference outputs) and the first onnxruntime calls take
hundreds of milliseconds; doing them in a thread keeps the batches flowing on
the old version until the new one is ready, and the swap itself is a single
attribute assignment.

One holder per served version line: the shared model, and with
``INTEREST_PLATFORMS_SERVED`` one holder per platform following that
platform's ``PROMOTED.<platform>`` pointer (pinning with
``INTEREST_MODEL_VERSION`` applies to the shared model only).  Each swaps,
refuses and falls back on its own, so a damaged platform version never
stops the shared one, nor another platform's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from streams import metrics

log = logging.getLogger(__name__)
REFUSAL_TTL_S = 600.0


def _load_and_warm(root: str, version: str, use_gpu: str) -> Any:
    """Verify, load, and run one encode so the first real batch pays no warm-up."""
    from model.runtime import EncoderRuntime
    from schemas.sequence import SeqEvent

    runtime = EncoderRuntime.load(root, version, use_gpu)
    warm = [SeqEvent(f"warm-{i}", 1_700_000_000_000 + i, f"item-{i}", "click", "web", 1.0) for i in range(8)]
    runtime.encode([warm[: i + 1] for i in range(8)])
    return runtime


class ModelHolder:
    """Holds the runtime in use; ``refresh`` follows the registry's promoted version."""

    def __init__(self, settings: Settings, store_dim: Callable[[], int | None] = lambda: None,
                 platform: str | None = None) -> None:
        self.settings = settings
        self.platform = platform  # None: the shared model
        self.store_dim = store_dim  # a version whose vectors the store cannot hold is refused
        self._runtime: Any = None
        self._lock = asyncio.Lock()
        # version -> (reason, when): a refused version is retried only after REFUSAL_TTL_S, so
        # a damaged file is logged once per period, and a copy that was still syncing recovers.
        self.refused: dict[str, tuple[str, float]] = {}
        self.swaps = 0

    def current(self) -> Any:
        return self._runtime

    def expected(self) -> bool:
        """Whether a model should be serving: a version is pinned or the registry has a promoted one.

        While one is expected and none is loaded, the worker holds its person partitions rather
        than write states without profiles (a vector would then lag its state until the person's
        next event).
        """
        try:
            return self._wanted()[0] is not None
        except Exception:  # an unreadable registry: a model is meant to be there
            return True

    @property
    def version(self) -> str | None:
        return None if self._runtime is None else str(self._runtime.version)

    def _wanted(self) -> tuple[str | None, list[str]]:
        """The version to serve (pinned or promoted) and earlier promoted ones, newest first."""
        from model.registry import Registry

        if self.settings.model_version is not None and self.platform is None:
            return self.settings.model_version, []
        root = self.settings.registry
        if not Path(root).exists():
            return None, []
        registry = Registry(root)
        return registry.promoted(self.platform), list(reversed(registry.history(self.platform)))

    async def load(self, version: str | None = None) -> bool:
        """Load (and verify) ``version``, else the pinned or promoted one.

        At start-up (no runtime yet) a refused promoted version falls back to
        the newest earlier promoted version that passes the checks, so a bad
        publish cannot keep a restarted worker from encoding.  Returns False,
        keeping the old runtime, when there is nothing to load or the version
        is refused; the reason is logged once and counted.
        """
        async with self._lock:
            if version is not None:
                return await self._swap_to(version)
            want, earlier = await asyncio.to_thread(self._wanted)
            if want is None:
                return False
            if await self._swap_to(want):
                return True
            if self._runtime is None:
                for candidate in earlier:
                    if candidate != want and await self._swap_to(candidate):
                        log.warning("serving earlier version %s because %s was refused", candidate, want)
                        return True
            return False

    async def refresh(self) -> bool:
        """Follow the registry (announcement received or periodic check); True when a swap happened."""
        before = self.version
        await self.load()
        return self.version != before

    async def _swap_to(self, want: str) -> bool:
        from model.registry import ModelRejected

        if want == self.version:
            return True
        refused = self.refused.get(want)
        if refused is not None and time.monotonic() - refused[1] < REFUSAL_TTL_S:
            return False
        started = time.perf_counter()
        try:
            runtime = await asyncio.to_thread(
                _load_and_warm, self.settings.registry, want, self.settings.use_gpu
            )
        except ModelRejected as exc:
            return self._refuse(want, "checks", str(exc))
        except Exception as exc:  # onnxruntime / filesystem errors: refuse, keep serving
            return self._refuse(want, type(exc).__name__, f"{type(exc).__name__}: {exc}")
        expected = self.store_dim()
        if expected is not None and int(runtime.dim) != expected:
            return self._refuse(want, "dimension", f"version {want} makes {runtime.dim}-dim vectors; the profile "
                                f"store holds {expected}-dim vectors (initialise a store for it first)")
        old = self.version
        self._runtime = runtime
        self.swaps += 1
        if self.platform is None:  # the info metric names the shared version (platform ones: /stats)
            metrics.MODEL_INFO.info({"version": str(runtime.version), "dim": str(runtime.dim)})
        metrics.MODEL_SWAPS.inc()
        metrics.MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
        log.info("%smodel version %s in use (dim %s, was %s, loaded and checked in %.2fs)", self._what(),
                 runtime.version, runtime.dim, old, time.perf_counter() - started)
        return True

    def _what(self) -> str:
        return "" if self.platform is None else f"platform {self.platform} "

    def _refuse(self, version: str, reason: str, message: str) -> bool:
        self.refused[version] = (message, time.monotonic())
        metrics.MODEL_REFUSED.labels(reason=reason).inc()
        log.error("%smodel version %s REFUSED, still serving %s: %s", self._what(), version, self.version, message)
        return False


class ServedModels:
    """The shared holder plus one per served platform: what a worker encodes every batch with."""

    def __init__(self, settings: Settings, store_dim: Callable[[], int | None] = lambda: None) -> None:
        self.shared = ModelHolder(settings, store_dim)
        self.platforms = [ModelHolder(settings, store_dim, platform=p) for p in settings.platforms_served]

    def platform_runtimes(self) -> list[Any]:
        """Loaded platform runtimes, in the configured order (a platform with none loaded is skipped)."""
        return [r for r in (h.current() for h in self.platforms) if r is not None]

    def versions(self) -> dict[str, str | None]:
        """Platform -> version in use (``/stats``)."""
        return {str(h.platform): h.version for h in self.platforms}

    async def load(self) -> None:
        await self.shared.load()
        for holder in self.platforms:
            await holder.load()

    async def refresh(self) -> bool:
        """Follow every pointer (one announcement or registry check covers all); True when any swapped."""
        swapped = await self.shared.refresh()
        for holder in self.platforms:
            swapped = await holder.refresh() or swapped
        return swapped
