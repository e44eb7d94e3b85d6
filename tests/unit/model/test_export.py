"""ONNX export: dynamic shapes, parity with PyTorch (< 1e-4), and a gate that fails loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.encoder import EncoderConfig, InterestEncoder
from model.export import (
    OUTPUT,
    PARITY_TOL,
    ExportError,
    check_parity,
    cpu_session,
    export_all,
    random_sequences,
    torch_person,
)
from model.features import FeatureSpec, featurize
from testkit.models import make_sequences


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[InterestEncoder, Path, dict[str, object]]:
    torch.manual_seed(0)
    spec = FeatureSpec(hash_buckets=256, max_len=24)
    model = InterestEncoder(spec, EncoderConfig(width=16, heads=2, layers=2, dim=8))
    model.eval()
    out = tmp_path_factory.mktemp("onnx")
    info = export_all(model, out, real=make_sequences(40, seed=1), item_ids=["g1-i1", "g2-i2"])
    return model, out, info


def test_parity_on_random_and_real_sequences(
    exported: tuple[InterestEncoder, Path, dict[str, object]],
) -> None:
    model, out, info = exported
    parity = info["parity_max_abs_diff"]
    assert isinstance(parity, dict) and set(parity) == {"random", "real", "items"}
    assert max(parity.values()) < PARITY_TOL
    # Independently of the exporter's own check: realistic sequences, several paddings.
    sess = cpu_session(out / "model.onnx")
    seqs = make_sequences(50, seed=9)
    for pad in (None, 24):
        feats = featurize(seqs, model.spec, pad_to=pad)
        got = sess.run([OUTPUT], feats)[0]
        assert np.abs(got - torch_person(model, feats)).max() < PARITY_TOL


def test_dynamic_batch_and_sequence_length(exported: tuple[InterestEncoder, Path, dict[str, object]]) -> None:
    model, out, _ = exported
    sess = cpu_session(out / "model.onnx")
    seqs = random_sequences(model.spec, 7, seed=2)
    reference = sess.run([OUTPUT], featurize(seqs, model.spec, pad_to=24))[0]
    for batch in (1, 3, 7):
        for pad in (24, 40):  # longer than the training window works too: padding is masked
            got = sess.run([OUTPUT], featurize(seqs[:batch], model.spec, pad_to=pad))[0]
            assert got.shape == (batch, 8)
            assert np.abs(got - reference[:batch]).max() < 1e-5
    assert np.allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)


def test_fp16_variant_runs_and_is_close(exported: tuple[InterestEncoder, Path, dict[str, object]]) -> None:
    model, out, info = exported
    assert (out / "model_fp16.onnx").is_file()
    assert float(info["fp16_max_abs_diff"]) < 2e-2  # type: ignore[arg-type]
    import onnx

    proto = onnx.load(str(out / "model_fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert proto.ir_version == onnx.load(str(out / "model.onnx")).ir_version


def test_parity_gate_rejects_a_mismatching_graph(
    exported: tuple[InterestEncoder, Path, dict[str, object]],
) -> None:
    model, out, _ = exported
    other = InterestEncoder(model.spec, model.cfg)
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.person_proj.bias.add_(1e-2)  # a small drift the gate must catch
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(other, out / "model.onnx", out / "item_model.onnx", make_sequences(5), ["x"])


def test_the_exported_graph_computes_the_last_block_for_the_last_position_only(
    exported: tuple[InterestEncoder, Path, dict[str, object]],
) -> None:
    """The pruned last block gives the model's own numbers and does less work than the whole model."""
    import onnx

    from model.export import sequence_graph

    model, out, _ = exported
    feeds = featurize(make_sequences(32, seed=7, max_events=24), model.spec, pad_to=24)
    inputs = [torch.from_numpy(feeds[n]) for n in model.spec.input_names()]
    with torch.no_grad():
        assert torch.allclose(sequence_graph(model)(*inputs), model(*inputs), atol=1e-6)

    def one_row_products(path: Path) -> int:
        """MatMuls whose output has one row per sequence (``[..., 1, n]``) when run on 24-event sequences."""
        proto = onnx.load(str(path))
        names = [n.output[0] for n in proto.graph.node if n.op_type == "MatMul"]
        proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
        probe = out / f"probe-{path.name}"
        onnx.save(proto, str(probe))
        got = cpu_session(probe).run(names, feeds)
        return sum(1 for value in got if value.shape[-2] == 1)

    from model.export import _export

    whole = out / "whole.onnx"
    sample = featurize(random_sequences(model.spec, 3, seed=3), model.spec)
    _export(model, tuple(torch.from_numpy(sample[n]) for n in model.spec.input_names()), model.spec.input_names(),
            OUTPUT, {0: "batch", 1: "seq"}, whole, model.cfg.dim)
    assert one_row_products(whole) == 0, "the whole model computes every position"
    # query, scores, context, attention output, the two feed-forward products: per sequence, one row each
    assert one_row_products(out / "model.onnx") >= 6
    gpt2 = InterestEncoder(model.spec, EncoderConfig(width=16, heads=2, layers=2, dim=8, block="gpt2"))
    assert sequence_graph(gpt2) is gpt2, "GPT-2 blocks are exported whole"


def test_ligr_block_exports_with_parity(tmp_path: Path) -> None:
    """The gated SwiGLU block (``block="ligr"``) is plain matmuls: same parity and fp16 bounds."""
    torch.manual_seed(0)
    spec = FeatureSpec(hash_buckets=256, max_len=24)
    model = InterestEncoder(spec, EncoderConfig(width=16, heads=2, layers=2, dim=8, block="ligr", item_bias=True))
    model.eval()
    info = export_all(model, tmp_path, real=make_sequences(40, seed=1), item_ids=["g1-i1", "g2-i2"])
    parity = info["parity_max_abs_diff"]
    assert isinstance(parity, dict) and max(parity.values()) < PARITY_TOL
    assert float(info["fp16_max_abs_diff"]) < 2e-2  # type: ignore[arg-type]
    feats = featurize(make_sequences(30, seed=4), spec, pad_to=40)  # padding beyond the window is masked
    got = cpu_session(tmp_path / "model.onnx").run([OUTPUT], feats)[0]
    assert np.abs(got - torch_person(model, feats)).max() < PARITY_TOL
