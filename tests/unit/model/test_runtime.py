"""EncoderRuntime: what a worker loads; same vectors as evaluation and as PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.registry import ModelRejected, Registry
from model.runtime import EncoderRuntime, cuda_usable, length_buckets
from testkit.models import make_sequences

ROOT = str(Path(__file__).resolve().parents[3])


def test_encode_shapes_norms_and_empty(published: tuple[Path, Any]) -> None:
    root, result = published
    rt = EncoderRuntime.load(root)  # None: the promoted version
    assert rt.version == result.version
    assert rt.dim == 8 and rt.spec.max_len == 12
    empty = rt.encode([])
    assert empty.shape == (0, 8) and empty.dtype == np.float32
    vecs = rt.encode(make_sequences(25, seed=2))
    assert vecs.shape == (25, 8) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_length_bucketing_changes_no_output(published: tuple[Path, Any]) -> None:
    rt = EncoderRuntime.load(published[0])
    seqs = make_sequences(40, seed=4, max_events=30)  # longer than max_len=12: truncated
    together = rt.encode(seqs)
    alone = np.vstack([rt.encode([s]) for s in seqs])
    assert np.abs(together - alone).max() < 1e-5
    assert length_buckets(12) == [8, 12] and length_buckets(50) == [8, 16, 32, 50]


def test_runtime_matches_pytorch_weights(published: tuple[Path, Any]) -> None:
    from model.encoder import InterestEncoder
    from model.export import torch_person
    from model.features import featurize
    from model.publish import load_weights

    root, result = published
    spec, cfg, state = load_weights(Registry(root), result.version)
    model = InterestEncoder(spec, cfg)
    model.load_state_dict(state)
    model.eval()
    seqs = make_sequences(30, seed=6)
    expect = torch_person(model, featurize(seqs, spec))
    assert np.abs(EncoderRuntime.load(root).encode(seqs) - expect).max() < 1e-4


def test_eval_uses_the_same_vectors_as_the_runtime(
    published: tuple[Path, Any], events: list[dict[str, Any]]
) -> None:
    """`interest eval` recomputed from the registry equals the metrics recorded at publish."""
    from model.data import leave_two_out, load_events
    from model.evaluate import build_eval_set, catalogue_of, evaluate_version, vector_metrics

    root, result = published
    people = load_events(events, "ms")
    report = evaluate_version(people, str(root), target="valid")
    recorded = Registry(root).manifest(result.version)["metrics"]
    assert report["ndcg@10"] == pytest.approx(recorded["valid"]["ndcg@10"], abs=1e-6)
    assert report["users"] == recorded["valid"]["users"] == 80
    # And explicitly: the vectors eval ranks with are the runtime's encode() output.
    rt = EncoderRuntime.load(root)
    split = leave_two_out(people)
    cat = catalogue_of(people)
    data = build_eval_set(split, cat, "valid")
    direct = vector_metrics(rt.encode(data.histories), rt.item_vectors(cat), data)
    assert direct["ndcg@10"] == pytest.approx(report["ndcg@10"], abs=1e-6)


def test_unknown_items_get_vectors_from_the_item_tower(published: tuple[Path, Any]) -> None:
    rt = EncoderRuntime.load(published[0])
    known = rt.item_ids[:3]
    from_index = rt.item_vectors(known)
    from_tower = rt.encode_items(known)
    assert np.abs(from_index - from_tower).max() < 1e-4
    fresh = rt.item_vectors(["brand-new-item-1", known[0]])
    assert fresh.shape == (2, 8) and np.isfinite(fresh).all()
    assert np.allclose(np.linalg.norm(fresh[:, :-1], axis=1), 1.0, atol=1e-5)  # last: item bias


def test_concurrent_encode_from_threads(published: tuple[Path, Any]) -> None:
    rt = EncoderRuntime.load(published[0])
    batches = [make_sequences(30, seed=s) for s in range(8)]
    expect = [rt.encode(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(rt.encode, batches))
    assert all(np.array_equal(a, b) for a, b in zip(expect, got, strict=True))


def test_load_refuses_a_corrupted_version(published: tuple[Path, Any], tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(published[0], root)
    version = published[1].version
    path = root / version / "model.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelRejected, match="sha256"):
        EncoderRuntime.load(root, version)
    with pytest.raises(ModelRejected, match="none promoted"):
        EncoderRuntime.load(tmp_path / "empty-registry")


def test_gpu_choice(published: tuple[Path, Any]) -> None:
    rt = EncoderRuntime.load(published[0], use_gpu="no")
    assert rt.gpu is False
    if not cuda_usable():
        with pytest.raises(RuntimeError, match="no usable CUDA"):
            EncoderRuntime.load(published[0], use_gpu="yes")
    with pytest.raises(ValueError):
        EncoderRuntime.load(published[0], use_gpu="maybe")


def test_worker_modules_do_not_import_torch() -> None:
    code = (
        "import sys, model.runtime, model.registry, model.features, interest.model_cmd, model.evaluate, model.data; "
        "bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"heavy modules imported: {out.stdout} {out.stderr}"


def test_fp16_graph_runs_on_cpu_for_evaluation(published: tuple[Path, Any]) -> None:
    """precision="fp16" loads the GPU workers' graph on CPU (the quality bench ranks with it)."""
    root, result = published
    fp32 = EncoderRuntime.load(root, result.version, use_gpu="no")
    fp16 = EncoderRuntime.load(root, result.version, use_gpu="no", precision="fp16")
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    seqs = make_sequences(16, seed=4)
    a, b = fp32.encode(seqs), fp16.encode(seqs)
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.05
    with pytest.raises(ValueError, match="precision"):
        EncoderRuntime.load(root, result.version, use_gpu="no", precision="int8")
