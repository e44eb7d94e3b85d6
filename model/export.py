"""ONNX export of the encoder and item tower, with a parity gate that fails loudly.

Two graphs are exported:

* ``model.onnx``: sequence inputs (``spec.input_names()``, int64 ``[batch,
  seq]``, both axes dynamic) -> ``interest`` float32 ``[batch, dim]``; for
  BERT blocks written from the weights with onnxruntime's fused kernels
  (``model.fused_graph``), else the TorchScript export;
* ``item_model.onnx``: ``item_hash_k`` int64 ``[n]`` -> ``item_vector``
  float32 ``[n, dim]``, so a worker or query service can embed any item id
  without torch;

plus ``model_fp16.onnx`` (weights and activations in float16, float32 output)
for GPU workers, converted from the TorchScript export (plain ONNX ops, which
every provider runs in float16).  The opset and IR version are pinned to what the installed
onnxruntime loads, and every file is re-loaded and compared with PyTorch on
random and real sequences: a max abs difference of ``PARITY_TOL`` or more
raises :class:`ExportError` and nothing is published.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from model.encoder import InterestEncoder
from model.features import FeatureSpec, featurize, item_inputs
from model.fused_graph import fused_sequence_graph, has_fused_graph
from model.manifest import ModelRejected, cpu_session
from schemas.sequence import SeqEvent

OPSET = 18
IR_VERSION = 10
PARITY_TOL = 1e-4
FP16_TOL = 2e-2
OUTPUT = "interest"
ITEM_OUTPUT = "item_vector"


class ExportError(ModelRejected):
    """The exported graph does not reproduce the PyTorch model; do not publish it.

    A refusal like the quality gate's (a :class:`ModelRejected`), so whoever publishes a candidate, the
    periodic trainer among them, reports it and keeps serving the promoted version instead of stopping.
    """


class _ItemTower(nn.Module):
    def __init__(self, model: InterestEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, *hashes: torch.Tensor) -> torch.Tensor:
        return self.model.item_vectors(*hashes)


class _LastQuery(nn.Module):
    """The sequence graph as exported: exactly ``model.forward``, with the last block computed for the
    last position only.

    The vector is read from the last position, and a BERT (post-LN) block mixes positions only through
    the keys and values of its attention, so the last block needs the keys and values of every position
    but the query, attention output, residual, feed-forward and norms of the last one: 2 of its 12
    width-squared products per position instead of 12, about 40 % less work for two blocks, the same
    numbers (the parity gate checks them against ``model.forward``).  PyTorch eager runs every
    position of every block.  GPT-2 (pre-LN) blocks are exported whole.
    """

    def __init__(self, model: InterestEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        model = self.model
        x, bias = model.embed(list(inputs))
        for layer in list(model.layers)[:-1]:
            x = model.block(layer, x, bias)
        return model.person_from_hidden(model.final_norm(_bert_last_position(model.layers[-1], x, bias)))


def _bert_last_position(layer: Any, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A ``BertLayer``'s output at the last position only ``[B, w]`` (eval mode: no dropout)."""
    att = layer.attention.self
    batch, length, width = x.shape
    heads, size = int(att.num_attention_heads), int(att.attention_head_size)
    query = att.query(x[:, -1:, :]).view(batch, 1, heads, size).transpose(1, 2)
    key = att.key(x).view(batch, length, heads, size).transpose(1, 2)
    value = att.value(x).view(batch, length, heads, size).transpose(1, 2)
    weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * att.scaling + bias[:, :, -1:, :], dim=-1)
    context = torch.matmul(weights, value).transpose(1, 2).reshape(batch, 1, width)
    attended = layer.attention.output(context, x[:, -1:, :])
    return layer.output(layer.intermediate(attended), attended)[:, 0, :]


def sequence_graph(model: InterestEncoder) -> nn.Module:
    """The module exported as ``model.onnx``: the last-position form for BERT blocks, else the model."""
    return _LastQuery(model) if model.cfg.block == "bert" and len(model.layers) > 0 else model


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: list[str],
    output: str,
    axes: dict[int, str],
    path: Path,
    dim: int,
) -> None:
    """TorchScript-based export: mature, deterministic, and handles the dynamic axes we need.

    The output's second axis is pinned to ``dim`` in the graph (the exporter
    leaves it symbolic when the vector is assembled with a concat), so
    consumers and ``verify`` can read the dimension from the model itself.
    """
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes={**{n: axes for n in names}, output: {0: axes[0]}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION  # what onnxruntime 1.2x/1.3x loads everywhere
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[1].Clear()
    out_dims[1].dim_value = dim
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def export_traced(module: nn.Module, path: Path) -> None:
    """The TorchScript export of a sequence module (``sequence_graph(model)`` or the model itself) to ``path``."""
    model = module.model if isinstance(module, _LastQuery) else module
    if not isinstance(model, InterestEncoder):
        raise TypeError(f"not a sequence module of an InterestEncoder: {type(module).__name__}")
    spec = model.spec
    sample = featurize(random_sequences(spec, 3, seed=3), spec)
    args = tuple(torch.from_numpy(sample[n]) for n in spec.input_names())
    with torch.no_grad():
        _export(module, args, spec.input_names(), OUTPUT, {0: "batch", 1: "seq"}, path, model.cfg.dim)


def random_sequences(spec: FeatureSpec, count: int, seed: int) -> list[list[SeqEvent]]:
    """Random event sequences of varied length (1..max_len), unseen item ids included."""
    rng = np.random.default_rng(seed)
    platforms = [*spec.platforms, "brand-new-platform"]
    actions = [*spec.actions, "share"]
    out: list[list[SeqEvent]] = []
    for b in range(count):
        length = int(rng.integers(1, spec.max_len + 1))
        stamps = np.cumsum(rng.integers(0, 10**8, size=length))
        out.append(
            [
                SeqEvent(
                    f"r{b}-{i}",
                    int(stamps[i]),
                    f"item-{int(rng.integers(0, 10**6))}",
                    actions[int(rng.integers(len(actions)))],
                    platforms[int(rng.integers(len(platforms)))],
                )
                for i in range(length)
            ]
        )
    return out


def torch_person(model: InterestEncoder, feats: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(feats[n]) for n in model.spec.input_names())).numpy()


def check_parity(
    model: InterestEncoder,
    model_path: Path,
    item_path: Path,
    real: Sequence[Sequence[SeqEvent]],
    item_ids: Sequence[str],
    tol: float = PARITY_TOL,
) -> dict[str, float]:
    """Max abs diff ONNX vs PyTorch on random + real sequences and items; raises above ``tol``."""
    model.eval()
    spec = model.spec
    sess, item_sess = cpu_session(model_path), cpu_session(item_path)
    report: dict[str, float] = {}
    batches: dict[str, Sequence[Sequence[SeqEvent]]] = {
        "random": random_sequences(spec, 64, seed=7),
        "real": list(real)[:256],
    }
    for label, seqs in batches.items():
        if not seqs:
            continue
        feats = featurize(seqs, spec)
        got = sess.run([OUTPUT], feats)[0]
        report[label] = float(np.abs(got - torch_person(model, feats)).max())
    ids = [*list(item_ids)[:512], "never-seen-item", "another-new-one"]
    inputs = item_inputs(ids, spec)
    with torch.no_grad():
        expect = model.item_vectors(*(torch.from_numpy(inputs[n]) for n in spec.item_input_names())).numpy()
    report["items"] = float(np.abs(item_sess.run([ITEM_OUTPUT], inputs)[0] - expect).max())
    worst = max(report.values())
    if not np.isfinite(worst) or worst >= tol:
        raise ExportError(f"ONNX/PyTorch parity failed: max abs diff {report} (tolerance {tol})")
    return report


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 weights/activations with float32 outputs (inputs are int64 anyway)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(dst))


def check_fp16(fp32_path: Path, fp16_path: Path, spec: FeatureSpec) -> float:
    """Max abs diff fp16 vs fp32 graph on random sequences (loose tolerance: fp16 rounding)."""
    feats = featurize(random_sequences(spec, 32, seed=11), spec)
    ref = cpu_session(fp32_path).run([OUTPUT], feats)[0]
    got = cpu_session(fp16_path).run([OUTPUT], feats)[0]
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff >= FP16_TOL:
        raise ExportError(f"fp16 model diverges from fp32: max abs diff {diff} (tolerance {FP16_TOL})")
    return diff


def export_all(
    model: InterestEncoder,
    out_dir: Path,
    real: Sequence[Sequence[SeqEvent]] = (),
    item_ids: Sequence[str] = (),
    fp16: bool = True,
) -> dict[str, object]:
    """Write model.onnx, item_model.onnx (+ model_fp16.onnx) into ``out_dir`` and check them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = model.spec
    dim = model.cfg.dim
    traced = out_dir / ("model_traced.onnx" if has_fused_graph(model) else "model.onnx")
    try:  # the traced graph is only a source for fp16 and a cross-check: never left in the version
        export_traced(sequence_graph(model), traced)
        if has_fused_graph(model):
            fused = fused_sequence_graph(model, OUTPUT, OPSET, IR_VERSION)
            onnx.checker.check_model(fused, full_check=True)
            onnx.save(fused, str(out_dir / "model.onnx"))
        items = item_inputs(["a", "b", "c"], spec)
        item_args = tuple(torch.from_numpy(items[n]) for n in spec.item_input_names())
        _export(
            _ItemTower(model),
            item_args,
            spec.item_input_names(),
            ITEM_OUTPUT,
            {0: "n"},
            out_dir / "item_model.onnx",
            dim,
        )
        parity = check_parity(model, out_dir / "model.onnx", out_dir / "item_model.onnx", real, item_ids)
        info: dict[str, object] = {"opset": OPSET, "ir_version": IR_VERSION, "parity_max_abs_diff": parity}
        info["graph"] = "fused" if has_fused_graph(model) else "traced"
        if traced.name != "model.onnx":
            info["traced_parity_max_abs_diff"] = check_parity(model, traced, out_dir / "item_model.onnx", real,
                                                              item_ids)
        if fp16:
            convert_fp16(traced, out_dir / "model_fp16.onnx")
            info["fp16_max_abs_diff"] = check_fp16(out_dir / "model.onnx", out_dir / "model_fp16.onnx", spec)
    finally:
        if traced.name != "model.onnx":
            traced.unlink(missing_ok=True)
    return info
