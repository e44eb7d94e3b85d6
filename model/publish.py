"""Turn a trained PyTorch model into a published registry version.

Order matters and is what makes a publish trustworthy:

1. export ONNX (fp32 + fp16 + item tower) and fail on any parity miss;
2. evaluate the *exported* graph through :class:`EncoderRuntime`, i.e. the
   exact code path a worker runs, on the validation and test targets;
3. measure the currently promoted version on the same validation data, so
   the "not worse than promoted" gate compares like with like;
4. ``Registry.publish`` verifies the staged directory again and renames it
   into place atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Sequences, Split, refit_split, time_window
from model.encoder import EncoderConfig, InterestEncoder
from model.evaluate import (
    build_eval_set,
    catalogue_of,
    encoder_metrics,
    evaluate_version,
    popularity_metrics,
)
from model.export import PARITY_TOL, ExportError, export_all
from model.features import FeatureSpec, featurize
from model.plots import plot_training
from model.registry import ModelRejected, Registry
from model.runtime import EncoderRuntime
from model.trained import Trained, item_vectors

REFERENCE_ROWS = 8
REFERENCE_LEN = 16


def _round(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


def save_weights(model: InterestEncoder, path: Path) -> None:
    """Weights as plain numpy arrays: loadable for warm starts without pickle."""
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def load_weights(registry: Registry, version: str) -> tuple[FeatureSpec, EncoderConfig, dict[str, Any]]:
    """Spec, network shape and state dict of a published version (for ``--from``)."""
    import torch

    manifest = registry.verify(version)
    path = registry.path(version) / "weights.npz"
    if not path.is_file():
        raise ModelRejected(f"version {version} has no weights.npz: cannot warm-start from it")
    with np.load(path, allow_pickle=False) as data:
        state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    return FeatureSpec.from_dict(manifest["features"]), EncoderConfig.from_dict(manifest["encoder"]), state


def _reference(stage: Path, spec: FeatureSpec, sequences: list[Any], item_ids: list[str]) -> dict[str, Any]:
    """Small frozen inputs and the exported graph's outputs, for verify()'s parity check."""
    from model.export import ITEM_OUTPUT, OUTPUT, random_sequences
    from model.features import item_inputs
    from model.manifest import cpu_session

    seqs = (sequences[:REFERENCE_ROWS] or []) + random_sequences(spec, 2, seed=5)
    feats = featurize(seqs, spec, max_len=min(REFERENCE_LEN, spec.max_len))
    outputs = cpu_session(stage / "model.onnx").run([OUTPUT], feats)[0]
    ids = [*item_ids[:REFERENCE_ROWS], "reference-unseen-item"]
    item_out = cpu_session(stage / "item_model.onnx").run([ITEM_OUTPUT], item_inputs(ids, spec))[0]
    return {
        "inputs": {k: v.tolist() for k, v in feats.items()},
        "outputs": outputs.tolist(),
        "item_ids": ids,
        "item_outputs": item_out.tolist(),
        "tolerance": PARITY_TOL,
    }


def _refit_baseline(registry: Registry, version: str, seen: Split) -> float | None:
    """A promoted refit version measured on the very events it was refit on has seen their validation
    targets: compare against its recorded selection-run validation instead (None: measure it)."""
    manifest = registry.manifest(version)
    training = manifest.get("training", {})
    if not training.get("refit_epochs") or training.get("window") != time_window(seen.train):
        return None
    recorded = manifest.get("metrics", {}).get("valid", {}).get("ndcg@10")
    return float(recorded) if recorded is not None else None


def publish_trained(
    trained: Trained,
    people: Sequences,
    split: Split,
    registry: Registry,
    training_info: dict[str, Any],
    *,
    force: bool = False,
    promote: bool = True,
    tolerance: float = 0.0,
    platform: str | None = None,
    parent: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Export, evaluate through the runtime, and publish; returns (version, metrics).

    A platform version (``platform`` and the shared ``parent`` it was fine-tuned from) gets the
    platform's catalogue as item index and is gated against the platform's promoted version,
    measured on the same held-out platform events, or against ``parent`` when there is none yet.
    An export whose graph does not reproduce the weights raises :class:`ExportError`, a
    :class:`ModelRejected` too, so a periodic round reports it and the promoted version keeps serving.
    """
    model, spec = trained.model, trained.spec
    model.eval()
    seen = refit_split(split) if trained.refit_epochs else split  # what the published weights trained on
    catalogue = catalogue_of(people, platform)
    valid = build_eval_set(split, catalogue, "valid")
    test = build_eval_set(split, catalogue, "test")
    with tempfile.TemporaryDirectory(prefix="interest-export-") as tmp:
        stage = Path(tmp)
        try:
            onnx_info = export_all(model, stage, real=valid.histories, item_ids=catalogue)
        except ExportError as exc:  # the same refusal, saying whose candidate it was
            whose = f" for platform {platform}" if platform is not None else ""
            raise ExportError(f"candidate{whose} refused before publishing: {exc}") from exc
        np.savez(
            stage / "items.npz",
            ids=np.asarray(catalogue, dtype=str),
            vectors=item_vectors(model, catalogue, spec),
        )
        save_weights(model, stage / "weights.npz")
        plot_training(trained.history, trained.best_epoch, stage / "training.png")
        names = ["model.onnx", "model_fp16.onnx", "item_model.onnx", "items.npz", "weights.npz"]
        files = {name: stage / name for name in [*names, "training.png"] if (stage / name).is_file()}
        manifest: dict[str, Any] = {
            "version": "candidate",
            "dimension": trained.enc_cfg.dim,
            "features": spec.to_dict(),
            "encoder": trained.enc_cfg.to_dict(),
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in spec.input_names()],
            "outputs": [{"name": "interest", "dtype": "float32", "shape": ["batch", trained.enc_cfg.dim]}],
            "onnx": onnx_info,
            "training": {**training_info, "window": time_window(seen.train), "refit_epochs": trained.refit_epochs},
            "reference": _reference(stage, spec, valid.histories, catalogue),
        }
        runtime = EncoderRuntime(stage, manifest, use_gpu="no")
        item_vecs = runtime.item_vectors(catalogue)
        metrics: dict[str, Any] = {}
        if platform is not None:
            manifest.update(platform=platform, parent=parent)
        if valid.people:
            metrics["valid"] = _round(encoder_metrics(runtime.encode, item_vecs, valid))
            if trained.refit_epochs:
                # The refit weights trained on the validation targets: the selection run's numbers are the
                # honest validation (and what the gate compares); the refit's own are kept, labelled.
                metrics["valid_seen_in_training"] = metrics["valid"]
                metrics["valid"] = _round(dict(trained.best_valid))
                metrics["valid_from"] = f"selection run (PyTorch), then refit {trained.refit_epochs} epochs"
            metrics["test"] = _round(encoder_metrics(runtime.encode, item_vecs, test))
            metrics["popularity"] = {
                "valid": _round(popularity_metrics(split, catalogue, valid, "valid")),
                "test": _round(popularity_metrics(split, catalogue, test, "test")),
            }
        baseline = None
        promoted = registry.promoted(platform) or parent  # a platform's first version: its parent
        if promoted is not None and valid.people:
            try:
                ref = evaluate_version(people, str(registry.root), promoted, target="valid", use_gpu="no",
                                       platform=platform)
                recorded = _refit_baseline(registry, promoted, seen)
                baseline = float(ref["ndcg@10"]) if recorded is None else recorded
                metrics["promoted_on_same_data"] = {"version": promoted, "valid_ndcg@10": baseline}
                if recorded is not None:  # it trained on these validation targets: its recorded number counts
                    metrics["promoted_on_same_data"]["measured_on_seen_targets"] = _round(dict(ref))["ndcg@10"]
                if platform is not None:
                    metrics["promoted_on_same_data"]["platform"] = platform
            except (ModelRejected, KeyError, ValueError) as exc:
                metrics["promoted_on_same_data"] = {"version": promoted, "error": str(exc)}
        manifest["metrics"] = metrics
        manifest.pop("version")
        version = registry.publish(
            files, manifest, promote=promote, force=force, tolerance=tolerance, baseline=baseline
        )
    return version, metrics
