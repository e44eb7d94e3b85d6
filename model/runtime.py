"""Worker-side inference: event sequences -> interest vectors with onnxruntime.

Torch-free (the worker image has no torch).  Loading verifies the version
first (checksums, shapes, finiteness, reference parity), so a worker never
swaps in a model that would serve garbage.

Why bucketing: attention cost grows with the padded length, and most people
have short sequences.  Sequences are grouped by kept length into buckets of
8, 16, 32, ... up to ``max_len`` and each bucket is padded only to its own
length.  Because positions count from the oldest real event and padding is
masked, this changes no output (the tests check it).

Cores: on CPU a call's rows run as side-by-side lanes, one intra-op thread
each, ``threads`` of them (``model.cpu_lanes``: faster than splitting each
kernel across threads, and with denormals flushed on every thread).

Thread-safety: ``InferenceSession.run`` is thread-safe and ``featurize``
keeps no per-call shared state, so ``encode`` may be called from
``asyncio.to_thread`` in several threads at once.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model.cpu_lanes import run_in_lanes
from model.features import FeatureSpec, featurize, item_inputs
from model.registry import Registry
from schemas.sequence import SeqEvent

log = logging.getLogger(__name__)

MAX_ROWS = 2048  # rows per onnxruntime call: bounds memory for huge batches


def cuda_usable() -> bool:
    """True only if onnxruntime has the CUDA provider AND a CUDA device initialises.

    Asking onnxruntime for CUDA on a machine without a working driver makes it
    log loud errors and fall back silently; probing the driver first avoids both.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def length_buckets(max_len: int) -> list[int]:
    """Padded lengths used for batching: 8, 16, 32, ... and ``max_len`` itself."""
    out, size = [], 8
    while size < max_len:
        out.append(size)
        size *= 2
    out.append(max_len)
    return out


def default_threads() -> int:
    """Cores one runtime uses by default: min(4, cores), the rest is the worker's I/O."""
    return max(1, min(4, os.cpu_count() or 1))


def _session(path: Path, gpu: bool, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    # A worker shares its cores with Kafka I/O and the store client: do not spin.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if gpu:
        providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


class EncoderRuntime:
    """One loaded, verified model version; ``encode`` turns sequences into unit vectors."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        manifest: dict[str, Any],
        use_gpu: str = "auto",
        threads: int | None = None,
        precision: str = "auto",
    ) -> None:
        directory = Path(model_dir)
        if use_gpu not in ("auto", "yes", "no"):
            raise ValueError(f"use_gpu must be auto, yes or no, got {use_gpu!r}")
        if precision not in ("auto", "fp32", "fp16"):
            raise ValueError(f"precision must be auto, fp32 or fp16, got {precision!r}")
        gpu = use_gpu != "no" and cuda_usable()
        if use_gpu == "yes" and not gpu:
            raise RuntimeError("use_gpu=yes but no usable CUDA device / CUDAExecutionProvider")
        self.version: str = str(manifest.get("version", directory.name))
        self.dim: int = int(manifest["dimension"])
        self.spec: FeatureSpec = FeatureSpec.from_dict(manifest["features"])
        self.manifest = manifest
        self.gpu = gpu
        # auto: what a worker loads (fp16 on a GPU when published, fp32 on CPU); fp16/fp32 force a
        # graph, so the quality bench can rank with the GPU workers' fp16 graph on a CPU-only machine.
        fp16 = directory / "model_fp16.onnx"
        if precision == "fp16" and not fp16.is_file():
            raise FileNotFoundError(f"{fp16} not found: this version has no fp16 graph")
        use_fp16 = precision == "fp16" or (precision == "auto" and gpu and fp16.is_file())
        model_file = fp16 if use_fp16 else directory / "model.onnx"
        self.precision = "fp16" if use_fp16 else "fp32"
        # CPU: ``threads`` lanes of one intra-op thread each; GPU: one call, the device does the work.
        self.lanes = 1 if gpu else (threads or default_threads())
        session_threads = threads if gpu or self.lanes == 1 else 1
        self._session = _session(model_file, gpu, session_threads)
        self._item_session = _session(directory / "item_model.onnx", gpu, session_threads)
        self._output = self._session.get_outputs()[0].name
        self._item_output = self._item_session.get_outputs()[0].name
        self._buckets = length_buckets(self.spec.max_len)
        with np.load(directory / "items.npz", allow_pickle=False) as data:
            self.item_ids: list[str] = [str(i) for i in data["ids"]]
            self.item_matrix: np.ndarray = np.asarray(data["vectors"], dtype=np.float32)
        self._item_pos = {item: i for i, item in enumerate(self.item_ids)}
        log.info("loaded model %s (dim %d, %s)", self.version, self.dim, "cuda" if gpu else "cpu")

    @classmethod
    def load(
        cls,
        registry_root: str | os.PathLike[str],
        version: str | None = None,
        use_gpu: str = "auto",
        threads: int | None = None,
        precision: str = "auto",
    ) -> EncoderRuntime:
        """Verify and load ``version`` (None: the promoted one); raises ``ModelRejected``."""
        registry = Registry(registry_root)
        chosen = registry.resolve(version)
        manifest = registry.verify(chosen)
        return cls(registry.path(chosen), manifest, use_gpu=use_gpu, threads=threads, precision=precision)

    def _run(self, session: ort.InferenceSession, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self.gpu:
            return run_in_lanes(lambda part: np.asarray(session.run([output], part)[0], dtype=np.float32),
                                feeds, self.lanes)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(output, "cpu")
        session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def encode(self, sequences: Sequence[Sequence[SeqEvent]]) -> np.ndarray:
        """Unit interest vectors, float32 ``[len(sequences), dim]``, in input order.

        Each sequence must be in event-time order; only its last
        ``spec.max_len`` events are used.  An empty input gives ``[0, dim]``.
        """
        count = len(sequences)
        out = np.zeros((count, self.dim), dtype=np.float32)
        if count == 0:
            return out
        window = self.spec.max_len
        lengths = np.fromiter((min(len(s), window) for s in sequences), dtype=np.int64, count=count)
        bucket_of = np.searchsorted(np.asarray(self._buckets), lengths, side="left")
        for b in np.unique(bucket_of):
            rows = np.flatnonzero(bucket_of == b)
            width = self._buckets[int(b)]
            for start in range(0, len(rows), MAX_ROWS):
                chunk = rows[start : start + MAX_ROWS]
                feeds = featurize([sequences[i] for i in chunk], self.spec, pad_to=width)
                out[chunk] = self._run(self._session, self._output, feeds)
        return out

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray:
        """Unit item vectors computed by the item tower (works for never-seen ids)."""
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        for start in range(0, len(item_ids), MAX_ROWS * 8):
            part = item_ids[start : start + MAX_ROWS * 8]
            out[start : start + len(part)] = self._run(
                self._item_session, self._item_output, item_inputs(part, self.spec)
            )
        return out

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """Item vectors from the published index, computing only the ids it lacks."""
        get = self._item_pos.get
        pos = np.fromiter((get(item, -1) for item in item_ids), np.int64, len(item_ids))
        out = self.item_matrix[np.maximum(pos, 0)] if len(self.item_matrix) else np.zeros(
            (len(item_ids), self.dim), dtype=np.float32)
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            out[missing] = self.encode_items([item_ids[int(i)] for i in missing])
        return np.asarray(out, dtype=np.float32)
