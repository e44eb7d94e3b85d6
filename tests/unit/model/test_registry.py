"""Registry: atomic publish/promote/rollback and verify() refusing damaged versions."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.registry import MANIFEST, ModelRejected, Registry

RegistryCopy = Callable[[], tuple[Path, str]]


def _files(reg: Registry, version: str) -> dict[str, Path]:
    m = reg.manifest(version)
    return {name: reg.path(version) / name for name in m["files"]}


def _republish(reg: Registry, version: str, **kwargs: Any) -> str:
    """Publish a copy of an existing version's files (same model, new version)."""
    return reg.import_version(reg, version, **kwargs)


def test_published_version_is_complete_and_verifies(published: tuple[Path, Any]) -> None:
    root, result = published
    reg = Registry(root)
    assert reg.versions() == [result.version]
    assert reg.promoted() == result.version
    manifest = reg.verify(result.version)
    for key in (
        "version",
        "parent",
        "created",
        "sha256",
        "inputs",
        "dimension",
        "features",
        "training",
        "metrics",
        "reference",
        "files",
    ):
        assert key in manifest, key
    assert set(manifest["files"]) >= {
        "model.onnx",
        "model_fp16.onnx",
        "item_model.onnx",
        "items.npz",
        "weights.npz",
        "training.png",
    }
    ids, vecs = reg.item_index(result.version)
    assert vecs.shape == (len(ids), manifest["dimension"]) and vecs.dtype == np.float32
    # Unit direction plus (item_bias, the default) a last coordinate holding the learned item bias.
    assert manifest["encoder"]["item_bias"] is True
    assert np.allclose(np.linalg.norm(vecs[:, :-1], axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all() and np.ptp(vecs[:, -1]) > 0
    assert reg.model_path(result.version).is_file()


def test_corrupted_model_file_is_rejected_by_checksum(registry_copy: RegistryCopy) -> None:
    root, version = registry_copy()
    reg = Registry(root)
    path = reg.model_path(version)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRejected, match="sha256 mismatch for model.onnx"):
        reg.verify(version)


def test_half_written_versions_are_invisible_and_refused(registry_copy: RegistryCopy) -> None:
    root, version = registry_copy()
    reg = Registry(root)
    # A crashed publish leaves a staging directory; a bad copy may lack its manifest.
    shutil.copytree(root / version, root / ".staging-crashed")
    shutil.copytree(root / version, root / "v-no-manifest")
    (root / "v-no-manifest" / MANIFEST).unlink()
    assert reg.versions() == [version]
    with pytest.raises(ModelRejected, match="no manifest"):
        reg.verify("v-no-manifest")
    with pytest.raises(ModelRejected):
        reg.promote("v-no-manifest")
    assert reg.promoted() == version


def test_wrong_output_dimension_is_rejected(registry_copy: RegistryCopy) -> None:
    root, version = registry_copy()
    reg = Registry(root)
    path = root / version / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["dimension"] = manifest["dimension"] + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelRejected, match="dimension"):
        reg.verify(version)


def test_wrong_reference_outputs_are_rejected(registry_copy: RegistryCopy) -> None:
    root, version = registry_copy()
    path = root / version / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["reference"]["outputs"][0][0] += 0.01
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelRejected, match="reference parity"):
        Registry(root).verify(version)


def test_nan_item_index_is_rejected(registry_copy: RegistryCopy) -> None:
    root, version = registry_copy()
    reg = Registry(root)
    ids, vecs = reg.item_index(version)
    vecs[0, 0] = np.nan
    np.savez(root / version / "items.npz", ids=np.asarray(ids), vectors=vecs)
    with pytest.raises(ModelRejected, match="sha256 mismatch for items.npz"):
        reg.verify(version)
    # Even with a matching checksum, non-finite vectors are refused.
    from model.registry import sha256_file

    manifest = json.loads((root / version / MANIFEST).read_text())
    manifest["files"]["items.npz"] = sha256_file(root / version / "items.npz")
    (root / version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelRejected, match="NaN or Inf"):
        reg.verify(version)


def test_promote_and_rollback_keep_history(registry_copy: RegistryCopy) -> None:
    root, v1 = registry_copy()
    reg = Registry(root)
    v2 = _republish(reg, v1)
    v3 = _republish(reg, v1)
    assert reg.versions() == sorted([v1, v2, v3]) and len({v1, v2, v3}) == 3
    assert reg.promoted() == v3 and reg.history() == [v1, v2]
    assert reg.manifest(v3)["parent"] == v2
    assert reg.rollback() == v2 and reg.promoted() == v2
    assert reg.rollback() == v1 and reg.promoted() == v1
    with pytest.raises(ModelRejected, match="nothing to roll back"):
        reg.rollback()
    reg.promote(v3)
    assert reg.promoted() == v3 and reg.history() == [v1]
    log = [json.loads(line) for line in (root / "promotions.log").read_text().splitlines()]
    assert [e["action"] for e in log][-3:] == ["rollback", "rollback", "promote"]


def test_promoting_a_corrupted_version_leaves_the_pointer_alone(registry_copy: RegistryCopy) -> None:
    root, v1 = registry_copy()
    reg = Registry(root)
    v2 = _republish(reg, v1, promote=False)
    assert reg.promoted() == v1
    (root / v2 / "item_model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelRejected):
        reg.promote(v2)
    assert reg.promoted() == v1


def test_publish_refuses_a_worse_model_unless_forced(registry_copy: RegistryCopy) -> None:
    root, v1 = registry_copy()
    reg = Registry(root)
    worse = {"metrics": {"valid": {"ndcg@10": reg.manifest(v1)["metrics"]["valid"]["ndcg@10"] - 0.05}}}
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(ModelRejected, match="worse than the promoted"):
        _republish(reg, v1, manifest_update=worse)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("src-")) == before
    forced = _republish(reg, v1, manifest_update=worse, force=True)
    assert reg.promoted() == forced


def test_quality_gate_tolerance_defaults_to_zero(
    registry_copy: RegistryCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate 0.001 worse is refused by default and accepted only with a tolerance (a setting)."""
    from schemas.settings import Settings

    root, v1 = registry_copy()
    reg = Registry(root)
    slightly = {"metrics": {"valid": {"ndcg@10": reg.manifest(v1)["metrics"]["valid"]["ndcg@10"] - 0.001}}}
    with pytest.raises(ModelRejected, match="worse than the promoted"):
        _republish(reg, v1, manifest_update=slightly)
    assert reg.versions() == [v1]
    assert Settings().quality_gate_tolerance == 0.0
    monkeypatch.setenv("INTEREST_QUALITY_GATE_TOLERANCE", "0.002")
    tolerance = Settings().quality_gate_tolerance
    assert tolerance == 0.002
    accepted = _republish(reg, v1, manifest_update=slightly, tolerance=tolerance)
    assert reg.promoted() == accepted


def test_failed_verification_publishes_nothing(registry_copy: RegistryCopy) -> None:
    root, v1 = registry_copy()
    reg = Registry(root)
    bad = {"dimension": 3}
    with pytest.raises(ModelRejected):
        _republish(reg, v1, manifest_update=bad)
    assert reg.versions() == [v1]
    assert not list(root.glob(".staging-*"))


def test_readers_never_see_a_partial_pointer(registry_copy: RegistryCopy) -> None:
    root, v1 = registry_copy()
    reg = Registry(root)
    v2 = _republish(reg, v1)
    seen: set[str | None] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(Registry(root).promoted())
            except Exception as exc:  # a torn write would show up as a JSON error
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(15):
        reg.rollback() if reg.promoted() == v2 else reg.promote(v2)
    stop.set()
    thread.join()
    assert not errors
    assert seen <= {v1, v2}


def test_versions_published_within_one_second_keep_their_order(
    registry_copy: RegistryCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune published in the same second as its parent lists after it, whatever its hash."""
    root, v1 = registry_copy()
    reg = Registry(root)
    names = iter(["v20990101T000000Z-ffffffff", "v20990101T000000Z-00000000"])
    monkeypatch.setattr(Registry, "_new_version_name", lambda self, sha: next(names))
    first = _republish(reg, v1)
    second = _republish(reg, v1)
    assert second < first, "the names alone would list them the wrong way round"
    assert reg.versions()[-2:] == [first, second]
