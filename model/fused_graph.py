"""The BERT-block encoder written out as one ONNX graph of onnxruntime's fused kernels.

Why by hand: the TorchScript export of ``model.forward`` spells attention as
the textbook chain (a bias built from the mask with Where/And/Or, MatMul,
Add, Softmax over ``[B, heads, L, L]``, Transpose), and onnxruntime's
transformer optimizer does not recognise it (our causal, padding-aware mask
is not one of its patterns).  Writing the graph from the weights lets each
block use the kernels built for it; each choice below was measured at batch
256, sequence 50, on one and two threads (``bench.encoder`` keeps the
TorchScript graph as its ``traced`` variant):

* embeddings: the item tables and one folded (action, platform, gap,
  position) table: three gathers, one ``Sum``, ``LayerNormalization``;
* every block but the last: ``com.microsoft.Attention`` (packed QKV
  projection) over the model's own ``[B, L, L]`` mask, then the output
  projection, ``Sum`` + ``LayerNormalization``, a ``BiasGelu`` feed-forward,
  ``Sum`` + ``LayerNormalization``.  Not ``unidirectional=1`` (its causal
  path doubled the node's time) and not ``SkipLayerNormalization`` (its CPU
  kernel was ~5x slower than the two ops it replaces);
* the last block for the last position only (the vector is read there, see
  ``model.export._LastQuery``), its attention computed in the input space
  (:func:`_last_position_block`): no keys or values are materialised;
* the person head: ``Gemm`` and the two L2 normalisations of
  ``InterestEncoder.person_from_hidden``.

Same numbers as the model: masked scores get ``mask_filter_value`` added
instead of the most negative float, which changes nothing a row sees (exp
underflows to 0 either way), and the mask is the model's: causal, real keys,
and each position always sees itself (for the last query: the key mask with
its last column set, which is what a real sequence has anyway, padding
being on the left).  ``export_all`` checks parity with ``model.forward``
like every other graph.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from model.encoder import InterestEncoder

CONTRIB = "com.microsoft"
FOLD_MAX_ROWS = 65_536  # rows of the folded context table with positions (x width x 4 bytes: 16 MB at 64)
MASK_FILTER = -10000.0  # onnxruntime's default, far below any real score of a unit-scaled block


class _Graph:
    """Nodes and initializers of the graph being written; names are unique by construction."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray | torch.Tensor) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.name(stem)
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, outputs: int = 1,
           domain: str = "", **attrs: Any) -> str:
        names = [self.name(stem or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type),
                                           domain=domain or None, **attrs))
        return names[0]

    def linear_t(self, stem: str, linear: torch.nn.Linear) -> str:
        """A Linear's weight as the ``[in, out]`` matrix MatMul and Attention take."""
        return self.const(stem, linear.weight.detach().t())


def _embeddings(g: _Graph, model: InterestEncoder, names: list[str]) -> str:
    """Item tables and one folded table of every (action, platform, gap[, position]) sum, one Sum.

    The small tables are folded into one of ``actions x platforms x gaps x positions`` rows (27 000 for
    the defaults, 7 MB), indexed by ``((action * platforms + platform) * gaps + gap) * positions +
    position``: three gathers and three inputs of the ``[B, L, w]`` sum fewer.  Above FOLD_MAX_ROWS
    (long windows) positions keep their own table, so the folded one stays cache-sized.
    """
    k = model.spec.n_hashes
    tables = [cast(torch.nn.Embedding, t) for t in model.item_tables]
    hashes = [g.op("Gather", [g.const("item_table", t.weight), ids], "item_emb")
              for t, ids in zip(tables, names[:k], strict=True)]
    acts, plats, gaps, pos = (e.weight.detach() for e in (model.action_emb, model.platform_emb, model.gap_emb,
                                                          model.pos_emb))
    action, platform, gap, position = names[k:k + 4]
    fold_positions = acts.shape[0] * plats.shape[0] * gaps.shape[0] * pos.shape[0] <= FOLD_MAX_ROWS
    combined = acts[:, None, None, :] + plats[None, :, None, :] + gaps[None, None, :, :]
    if fold_positions:
        combined = combined[:, :, :, None, :] + pos[None, None, None, :, :]

    def times(value: str, count: int) -> str:
        return g.op("Mul", [value, g.const("count", np.array(count, dtype=np.int64))])

    index = g.op("Add", [times(g.op("Add", [times(action, plats.shape[0]), platform]), gaps.shape[0]), gap])
    if fold_positions:
        index = g.op("Add", [times(index, pos.shape[0]), position], "context_index")
    inputs = [*hashes, g.op("Gather", [g.const("context_table", combined.reshape(-1, acts.shape[1])), index],
                            "context_emb")]
    if not fold_positions:
        inputs.append(g.op("Gather", [g.const("pos_table", pos), position], "pos_emb"))
    total = g.op("Sum", inputs, "emb_sum")
    norm = model.emb_norm
    if not isinstance(norm, torch.nn.LayerNorm):
        raise ValueError("a BERT encoder normalises its embeddings")
    return g.op("LayerNormalization", [total, g.const("ln_g", norm.weight), g.const("ln_b", norm.bias)],
                "emb_ln", axis=-1, epsilon=float(norm.eps))


def _key_mask(g: _Graph, mask: str) -> str:
    """The ``[B, L]`` int32 key mask, its last column forced to 1 (see the module docstring)."""
    axis, zero, minus_one = g.const("axis", np.array([1])), g.const("zero", np.array([0])), g.const(
        "m1", np.array([-1]))
    end = g.const("end", np.array([np.iinfo(np.int64).max]))
    head = g.op("Slice", [mask, zero, minus_one, axis], "mask_head")
    last = g.op("Slice", [mask, minus_one, end, axis], "mask_last")
    ones = g.op("Add", [g.op("Mul", [last, g.const("i0", np.array(0, dtype=np.int64))]),
                        g.const("i1", np.array(1, dtype=np.int64))], "mask_one")
    return g.op("Cast", [g.op("Concat", [head, ones], "mask_full", axis=1)], "key_mask", to=TensorProto.INT32)


def _add_and_norm(g: _Graph, product: str, bias: torch.Tensor, residual: str, norm: torch.nn.LayerNorm) -> str:
    """LayerNorm(product + bias + residual) as one ``Sum`` and ``LayerNormalization``.

    Not ``SkipLayerNormalization``: onnxruntime's CPU kernel for it measured ~5x slower than these two
    (and a ``Sum``, unlike an ``Add``, is not fused back into it by the session's optimizer).
    """
    total = g.op("Sum", [product, g.const("bias", bias), residual], "residual_sum")
    return g.op("LayerNormalization", [total, g.const("ln_g", norm.weight), g.const("ln_b", norm.bias)], "ln",
                axis=-1, epsilon=float(norm.eps))


def _allowed(g: _Graph, mask: str) -> str:
    """The model's attention mask as ``[B, L, L]`` int32: (causal and a real key) or the diagonal.

    A 3-D mask, not ``unidirectional=1`` with the ``[B, L]`` key mask: the same result, but onnxruntime's
    causal path measured twice the time of the whole Attention node at batch 256, sequence 50.
    """
    length = g.op("Gather", [g.op("Shape", [mask]), g.const("one", np.array(1, dtype=np.int64))], "length")
    keys = g.op("Range", [g.const("zero", np.array(0, dtype=np.int64)), length,
                          g.const("step", np.array(1, dtype=np.int64))], "keys")
    queries = g.op("Unsqueeze", [keys, g.const("axis", np.array([1]))], "queries")
    real = g.op("Unsqueeze", [g.op("Greater", [mask, g.const("zero", np.array(0, dtype=np.int64))]),
                              g.const("axis", np.array([1]))], "real_key")
    causal = g.op("And", [g.op("LessOrEqual", [keys, queries], "causal"), real], "causal_real")
    allowed = g.op("Or", [causal, g.op("Equal", [keys, queries], "diagonal")], "allowed")
    return g.op("Cast", [allowed], "allowed_i32", to=TensorProto.INT32)


def _post_attention(g: _Graph, layer: Any, context: str, residual: str) -> str:
    """A BertLayer after its attention: output projection, add & norm, GELU feed-forward, add & norm."""
    out, inter, last = layer.attention.output, layer.intermediate.dense, layer.output
    attended = _add_and_norm(g, g.op("MatMul", [context, g.linear_t("wo", out.dense)]), out.dense.bias, residual,
                             out.LayerNorm)
    hidden = g.op("BiasGelu", [g.op("MatMul", [attended, g.linear_t("w1", inter)]), g.const("bi", inter.bias)],
                  "gelu", domain=CONTRIB)
    return _add_and_norm(g, g.op("MatMul", [hidden, g.linear_t("w2", last.dense)]), last.dense.bias, attended,
                         last.LayerNorm)


def _heads_and_scale(layer: Any) -> tuple[int, float]:
    att = layer.attention.self
    size = int(att.attention_head_size)
    return int(att.num_attention_heads), float(getattr(att, "scaling", 1.0 / math.sqrt(size)))


def _full_block(g: _Graph, layer: Any, x: str, allowed: str) -> str:
    """A whole BertLayer: ``Attention`` (packed QKV projection, the ``[B, L, L]`` mask) and the rest."""
    att = layer.attention.self
    heads, scale = _heads_and_scale(layer)
    weights = torch.cat([att.query.weight, att.key.weight, att.value.weight], dim=0).detach().t()
    bias = torch.cat([att.query.bias, att.key.bias, att.value.bias]).detach()
    context = g.op("Attention", [x, g.const("wqkv", weights), g.const("bqkv", bias), allowed], "context",
                   domain=CONTRIB, num_heads=heads, scale=scale, mask_filter_value=MASK_FILTER)
    return _post_attention(g, layer, context, x)


def _last_position_block(g: _Graph, layer: Any, x: str, key_bias: str) -> str:
    """The last BertLayer at the last position, its attention computed in the input space.

    For one query the keys and values of the other positions need not exist: with head ``h``'s
    key rows ``K_h`` and value rows ``V_h`` of the projections, ``q_h . (K_h x_j + b_k) = (q_h K_h) . x_j
    + const`` (the constant cancels in the softmax) and ``sum_j p_j (V_h x_j + b_v) = V_h (sum_j p_j x_j)
    + b_v`` (the weights sum to 1).  So the block projects the query into the input space (``[B, heads,
    w]``), scores it against the inputs themselves, mixes the inputs, and projects the mix: the two
    ``[B, L, w] x [w, w]`` products of the keys and values (a quarter of the graph's multiply-adds) and
    their transposes disappear, for products of ``[B, heads, L]`` size.
    """
    att = layer.attention.self
    heads, scale = _heads_and_scale(layer)
    width = int(att.query.weight.shape[0])
    size = width // heads
    last = g.op("Slice", [x, g.const("m1", np.array([-1])), g.const("end", np.array([np.iinfo(np.int64).max])),
                          g.const("axis", np.array([1]))], "last")
    query = g.op("Add", [g.op("MatMul", [last, g.linear_t("wq", att.query)]), g.const("bq", att.query.bias)])
    per_head = g.op("Reshape", [query, g.const("shape", np.array([0, heads, 1, size]))], "query_heads")
    key_heads = (att.key.weight.detach() * scale).reshape(heads, size, width)  # [heads, size, w]: K_h, scaled
    in_space = g.op("Reshape", [g.op("MatMul", [per_head, g.const("wk_heads", key_heads)]),
                                g.const("shape", np.array([0, heads, width]))], "query_in_space")
    scores = g.op("FusedMatMul", [in_space, x], "scores", domain=CONTRIB, transB=1)  # [B, heads, L]
    weights = g.op("Softmax", [g.op("Add", [scores, key_bias])], "weights", axis=-1)
    mixed = g.op("Unsqueeze", [g.op("MatMul", [weights, x], "mixed"), g.const("axis", np.array([2]))])
    value_heads = att.value.weight.detach().reshape(heads, size, width).transpose(1, 2)  # [heads, w, size]
    context = g.op("Reshape", [g.op("MatMul", [mixed, g.const("wv_heads", value_heads.contiguous())]),
                               g.const("shape", np.array([0, 1, width]))], "context_heads")
    context = g.op("Add", [context, g.const("bv", att.value.bias)], "context")
    out = _post_attention(g, layer, context, last)
    return g.op("Squeeze", [out, g.const("axis", np.array([1]))], "hidden_last")


def _key_bias(g: _Graph, key_mask: str) -> str:
    """``[B, 1, L]``: 0 on keys the last query sees, ``MASK_FILTER`` elsewhere."""
    real = g.op("Cast", [g.op("Greater", [key_mask, g.const("zero", np.array(0, dtype=np.int32))])], "key_real",
                to=TensorProto.FLOAT)
    shifted = g.op("Sub", [real, g.const("f1", np.array(1.0, dtype=np.float32))], "key_shift")
    return g.op("Unsqueeze", [g.op("Mul", [shifted, g.const("filter", np.array(-MASK_FILTER, dtype=np.float32))]),
                              g.const("axis", np.array([1]))], "key_bias")


def _normalize(g: _Graph, x: str) -> str:
    """``torch.nn.functional.normalize``: x / max(||x||, 1e-12) over the last axis."""
    norm = g.op("ReduceL2", [x, g.const("axes", np.array([-1]))], "l2", keepdims=1)
    return g.op("Div", [x, g.op("Max", [norm, g.const("eps", np.array(1e-12, dtype=np.float32))])], "unit")


def _person(g: _Graph, model: InterestEncoder, hidden: str, output: str) -> None:
    proj = model.person_proj
    vec = _normalize(g, g.op("Gemm", [hidden, g.const("wp", proj.weight), g.const("bp", proj.bias)], "person",
                             transB=1))
    if model.cfg.item_bias:
        ones = g.op("Add", [g.op("Mul", [g.op("Slice", [vec, g.const("zero", np.array([0])), g.const(
            "one", np.array([1])), g.const("axis", np.array([1]))]), g.const("f0", np.array(0, np.float32))]),
            g.const("f1", np.array(1, np.float32))], "bias_one")
        vec = g.op("Concat", [vec, ones], "with_bias", axis=1)
    g.nodes.append(helper.make_node("Identity", [_normalize(g, vec)], [output], name="output"))


def has_fused_graph(model: InterestEncoder) -> bool:
    """The fused form exists for BERT (post-LN) blocks; GPT-2 and LiGR blocks export through torch."""
    return model.cfg.block == "bert" and len(model.layers) > 0


def fused_sequence_graph(model: InterestEncoder, output: str, opset: int, ir_version: int) -> onnx.ModelProto:
    """``model.forward`` as a graph of fused kernels (see the module docstring); eval-mode weights."""
    if not has_fused_graph(model):
        raise ValueError(f"no fused graph for block {model.cfg.block!r} with {len(model.layers)} layers")
    model.eval()
    names = model.spec.input_names()
    g = _Graph()
    with torch.no_grad():
        x = _embeddings(g, model, names)
        key_mask = _key_mask(g, names[-1])
        layers = list(model.layers)
        allowed = _allowed(g, names[-1]) if len(layers) > 1 else ""
        for layer in layers[:-1]:
            x = _full_block(g, layer, x, allowed)
        _person(g, model, _last_position_block(g, layers[-1], x, _key_bias(g, key_mask)), output)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", model.cfg.dim])]
    graph = helper.make_graph(g.nodes, "interest_encoder_fused", inputs, outputs, g.weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(CONTRIB, 1)])
    proto.ir_version = ir_version
    return proto
