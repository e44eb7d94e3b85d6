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

    from model.export import export_traced

    whole, traced = out / "whole.onnx", out / "traced.onnx"
    export_traced(model, whole)
    export_traced(sequence_graph(model), traced)
    assert one_row_products(whole) == 0, "the whole model computes every position"
    # query, scores, context, attention output, the two feed-forward products: per sequence, one row each
    assert one_row_products(traced) >= 6
    # The served graph (fused kernels) prunes the same way: query, attention output and feed-forward.
    assert one_row_products(out / "model.onnx") >= 4
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


def test_the_served_graph_uses_fused_attention_with_the_models_numbers(
    exported: tuple[InterestEncoder, Path, dict[str, object]],
) -> None:
    """model.onnx is the fused graph (no mask-building or transposing chain), exact on full, short and empty
    sequences."""
    import onnx

    model, out, info = exported
    assert info["graph"] == "fused" and not (out / "model_traced.onnx").exists()
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"Attention", "FusedMatMul", "BiasGelu"} <= ops
    assert not ops & {"Where", "Transpose"}, "the textbook attention chain is still there"
    assert "SkipLayerNormalization" not in ops, "its CPU kernel measured ~5x slower than Sum + LayerNormalization"
    sess = cpu_session(out / "model.onnx")
    seqs = [[], *make_sequences(20, seed=5, max_events=24), *random_sequences(model.spec, 20, seed=6)]
    for pad in (1, 24, 40):
        kept = [s for s in seqs if len(s) <= pad]
        feats = featurize(kept, model.spec, pad_to=pad)
        assert np.abs(sess.run([OUTPUT], feats)[0] - torch_person(model, feats)).max() < PARITY_TOL


@pytest.mark.parametrize("item_bias", [False, True])
def test_fused_graph_parity_with_one_and_three_layers(tmp_path: Path, item_bias: bool) -> None:
    """The last block alone (one layer) and several full blocks before it, with and without the item bias."""
    from model.fused_graph import fused_sequence_graph

    torch.manual_seed(1)
    spec = FeatureSpec(hash_buckets=256, max_len=24)
    for layers in (1, 3):
        model = InterestEncoder(spec, EncoderConfig(width=16, heads=4, layers=layers, dim=8, item_bias=item_bias))
        with torch.no_grad():  # trained-looking weights: padding rows and biases are no longer zero
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.2)
        model.eval()
        path = tmp_path / f"fused-{layers}.onnx"
        import onnx

        onnx.save(fused_sequence_graph(model, OUTPUT, 18, 10), str(path))
        feats = featurize([[], *random_sequences(spec, 40, seed=layers)], spec, pad_to=24)
        got = cpu_session(path).run([OUTPUT], feats)[0]
        assert np.abs(got - torch_person(model, feats)).max() < PARITY_TOL, f"{layers} layers"


def test_fused_graph_keeps_a_position_table_for_long_windows(tmp_path: Path) -> None:
    """Above FOLD_MAX_ROWS the positions are not folded into the context table; the numbers stay exact."""
    import onnx

    from model.fused_graph import FOLD_MAX_ROWS, fused_sequence_graph

    torch.manual_seed(2)
    spec = FeatureSpec(hash_buckets=256, max_len=200)
    model = InterestEncoder(spec, EncoderConfig(width=16, heads=2, layers=2, dim=8))
    model.eval()
    assert spec.n_actions * spec.n_platforms * spec.n_gaps * spec.max_len > FOLD_MAX_ROWS
    proto = fused_sequence_graph(model, OUTPUT, 18, 10)
    assert any(init.name.startswith("pos_table") for init in proto.graph.initializer)
    path = tmp_path / "long.onnx"
    onnx.save(proto, str(path))
    feats = featurize(random_sequences(spec, 20, seed=3), spec, pad_to=200)
    assert np.abs(cpu_session(path).run([OUTPUT], feats)[0] - torch_person(model, feats)).max() < PARITY_TOL
