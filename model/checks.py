"""The checks a version must pass before anyone serves it (torch-free).

Run by ``Registry.publish`` on the staging directory (so a bad model never
becomes visible) and by ``Registry.verify`` / ``EncoderRuntime.load`` before a
worker swaps a version in (so a copy corrupted on disk or in transit is
refused and the worker keeps serving the old one).  Each failure raises
``ModelRejected`` with a message that names the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.features import FeatureSpec
from model.manifest import MANIFEST, ModelRejected, cpu_session, sha256_file


def _reject(reason: str) -> Exception:
    return ModelRejected(reason)


def _session(path: Path) -> Any:
    return cpu_session(path, threads=1)


def _finite_output(values: np.ndarray, dim: int, rows: int, what: str) -> None:
    if values.shape != (rows, dim):
        raise _reject(f"{what}: output shape {list(values.shape)} != expected {[rows, dim]}")
    if not np.isfinite(values).all():
        raise _reject(f"{what}: output contains NaN or Inf")


def check_version_dir(directory: Path) -> dict[str, Any]:
    """Checksums, shapes, finiteness and reference parity of one version directory."""
    name = directory.name
    path = directory / MANIFEST
    if not path.is_file():
        raise _reject(f"version {name}: no {MANIFEST} (half-written or not a version)")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise _reject(f"version {name}: unreadable manifest: {exc}") from exc
    files: dict[str, str] = manifest.get("files", {})
    for required in ("model.onnx", "item_model.onnx", "items.npz"):
        if required not in files:
            raise _reject(f"version {name}: manifest lists no {required}")
    for fname, expected in files.items():
        fpath = directory / fname
        if not fpath.is_file():
            raise _reject(f"version {name}: {fname} is missing")
        actual = sha256_file(fpath)
        if actual != expected:
            raise _reject(f"version {name}: sha256 mismatch for {fname} ({actual[:12]} != {expected[:12]})")
    if manifest.get("sha256") != files["model.onnx"]:
        raise _reject(f"version {name}: manifest sha256 does not match model.onnx's checksum")

    dim = int(manifest["dimension"])
    spec = FeatureSpec.from_dict(manifest["features"])
    ref = manifest["reference"]
    tol = float(ref.get("tolerance", 1e-4))

    try:
        sess = _session(directory / "model.onnx")
        item_sess = _session(directory / "item_model.onnx")
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise _reject(f"version {name}: onnxruntime cannot load the model: {exc}") from exc
    names = [i.name for i in sess.get_inputs()]
    if names != spec.input_names():
        raise _reject(f"version {name}: model inputs {names} != feature spec inputs {spec.input_names()}")
    declared = [i["name"] for i in manifest.get("inputs", [])]
    if declared != names:
        raise _reject(f"version {name}: manifest inputs {declared} != model inputs {names}")
    out_shape = sess.get_outputs()[0].shape
    if len(out_shape) != 2 or out_shape[1] != dim:
        raise _reject(f"version {name}: model output shape {out_shape} does not end in dimension {dim}")

    inputs = {k: np.asarray(v, dtype=np.int64) for k, v in ref["inputs"].items()}
    rows = next(iter(inputs.values())).shape[0]
    got = sess.run(None, inputs)[0]
    _finite_output(got, dim, rows, f"version {name} model.onnx")
    diff = float(np.abs(got - np.asarray(ref["outputs"], dtype=np.float32)).max())
    if not diff < tol:
        raise _reject(f"version {name}: reference parity failed, max abs diff {diff:.3g} >= {tol}")

    from model.features import item_inputs

    item_ids = list(ref["item_ids"])
    got_items = item_sess.run(None, item_inputs(item_ids, spec))[0]
    _finite_output(got_items, dim, len(item_ids), f"version {name} item_model.onnx")
    idiff = float(np.abs(got_items - np.asarray(ref["item_outputs"], dtype=np.float32)).max())
    if not idiff < tol:
        raise _reject(f"version {name}: item reference parity failed, max abs diff {idiff:.3g} >= {tol}")

    with np.load(directory / "items.npz", allow_pickle=False) as data:
        ids, vecs = data["ids"], data["vectors"]
        if vecs.ndim != 2 or vecs.shape != (len(ids), dim):
            raise _reject(f"version {name}: item index shape {list(vecs.shape)} != [{len(ids)}, {dim}]")
        if not np.isfinite(vecs).all():
            raise _reject(f"version {name}: item index contains NaN or Inf")
    if "model_fp16.onnx" in files:
        try:
            half = _session(directory / "model_fp16.onnx").run(None, inputs)[0]
        except Exception as exc:
            raise _reject(f"version {name}: model_fp16.onnx does not run: {exc}") from exc
        _finite_output(half, dim, rows, f"version {name} model_fp16.onnx")
    return manifest
