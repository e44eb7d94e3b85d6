"""Which encoder a worker uses now, loaded off the event loop.

The holder is read once per batch (``current()``), so a swap takes effect
between two batches and never inside one.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from streams import metrics
from streams.settings import Settings

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Any = None

    def current(self) -> Any:
        return self._runtime

    @property
    def version(self) -> str | None:
        return None if self._runtime is None else str(self._runtime.version)

    async def load(self, version: str | None = None) -> bool:
        """Load (and verify) a version, the pinned one, or the promoted one.

        Returns False, keeping the old runtime, when there is nothing to load
        or the version is refused; the reason is logged and counted.
        """
        from model.registry import ModelRejected, Registry
        from model.runtime import EncoderRuntime

        root = self.settings.registry
        want = version or self.settings.model_version
        if want is None:
            if not Path(root).exists():
                return False
            want = await asyncio.to_thread(Registry(root).promoted)
            if want is None:
                return False
        if want == self.version:
            return True
        try:
            runtime = await asyncio.to_thread(EncoderRuntime.load, root, want, self.settings.use_gpu)
        except ModelRejected as exc:
            log.error("model version %s refused, keeping %s: %s", want, self.version, exc)
            metrics.MODEL_REFUSED.labels(reason=type(exc).__name__).inc()
            return False
        self._runtime = runtime
        metrics.MODEL_INFO.info({"version": str(runtime.version), "dim": str(runtime.dim)})
        log.info("model version %s in use (dim %s)", runtime.version, runtime.dim)
        return True
