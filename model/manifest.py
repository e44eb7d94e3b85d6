"""What every version directory is made of, shared by the registry and its checks (torch-free).

Why a module of its own: the registry runs the checks and the checks read the
manifest; with these names here neither imports the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ModelRejected(Exception):
    """A version failed a check; ``reason`` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session, quiet; the one helper the checks, export and publish share."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
