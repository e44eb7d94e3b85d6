"""The interest encoder: a causal transformer over a person's event sequence.

Built from Hugging Face transformer blocks instantiated from a config object
(``BertConfig`` + ``BertLayer`` by default, ``GPT2Config`` + ``GPT2Block`` as
an option; nothing is downloaded): the block is standard, well tested and
exports cleanly to ONNX.  What is ours is the event embedding and the heads:

* event embedding = sum over ``k`` hashed item tables + action + platform +
  time-gap bucket + position, then LayerNorm and dropout;
* ``block="ligr"``: our own pre-norm block with gated residuals and a
  SwiGLU feed-forward (:class:`LigrBlock`, the LiGR layer eSASRec uses);
* person head: the hidden state at the last (most recent) column, projected
  and L2-normalised: one unit vector of ``dim`` per person;
* item head: the *same* hashed item tables, projected and normalised, so any
  item id string (even one never seen in training) has a vector in the
  person space.  With ``item_bias`` (default) the last of the ``dim``
  coordinates is a learned per-item bias (popularity) and the person vector
  carries a constant there, so ``person . item`` = ``cos + bias`` up to the
  person's norm factor: rank items by the **dot product** (what the item
  index, ``interest recommend`` and an ANN index with dot-product similarity
  compute).

Attention is causal and ignores padding, with each position always allowed
to attend to itself so a fully padded row never produces NaN.  Because
positions count from the oldest real event, a sequence's output does not
depend on how much left padding it got.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from model.features import FeatureSpec


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the network; stored in the manifest so a version can be rebuilt."""

    width: int = 64
    layers: int = 2
    heads: int = 2
    ffn_mult: int = 2
    dim: int = 64
    dropout: float = 0.2
    attn_dropout: float = 0.0
    init_scale: float = 10.0
    block: str = "bert"  # "bert": post-LN BertLayer; "gpt2": pre-LN GPT2Block; "ligr": LigrBlock
    item_bias: bool = False  # reserve the last vector coordinate for a learned item bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class LigrBlock(nn.Module):
    """Pre-norm block with gated residuals and a SwiGLU feed-forward (LiGR, as in eSASRec).

    ``x + sigmoid(gate(LN(x))) * attention(LN(x))``, then the same with the
    feed-forward ``down(silu(up_a(LN(x))) * up_b(LN(x)))``: the gates let a
    layer pass its input through unchanged where it has nothing to add.
    Written with plain matmuls (the additive ``[B, 1, L, L]`` mask of
    :meth:`InterestEncoder.hidden`) so it exports to ONNX like the others.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        w, self.heads = cfg.width, cfg.heads
        self.norm1, self.norm2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.qkv = nn.Linear(w, 3 * w)
        self.out = nn.Linear(w, w)
        self.gate1, self.gate2 = nn.Linear(w, w), nn.Linear(w, w)
        self.up = nn.Linear(w, 2 * w * cfg.ffn_mult)
        self.down = nn.Linear(w * cfg.ffn_mult, w)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, w = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).view(b, length, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // self.heads) + bias, dim=-1)
        ctx = (self.attn_drop(att) @ v).transpose(1, 2).reshape(b, length, w)
        x = x + torch.sigmoid(self.gate1(h)) * self.drop(self.out(ctx))
        h = self.norm2(x)
        a, g = self.up(h).chunk(2, dim=-1)
        return x + torch.sigmoid(self.gate2(h)) * self.drop(self.down(nn.functional.silu(a) * g))


def _blocks(cfg: EncoderConfig, max_len: int) -> list[nn.Module]:
    """Transformer blocks from a transformers config object (nothing is downloaded)."""
    if cfg.block == "ligr":
        return [LigrBlock(cfg) for _ in range(cfg.layers)]
    if cfg.block == "gpt2":
        from transformers import GPT2Config
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        gpt = GPT2Config(
            vocab_size=1,
            n_positions=max_len,
            n_embd=cfg.width,
            n_layer=cfg.layers,
            n_head=cfg.heads,
            n_inner=cfg.width * cfg.ffn_mult,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.attn_dropout,
            activation_function="gelu",
            bos_token_id=None,
            eos_token_id=None,
        )
        gpt._attn_implementation = "eager"
        return [GPT2Block(gpt, layer_idx=i) for i in range(cfg.layers)]
    if cfg.block != "bert":
        raise ValueError(f"unknown block type {cfg.block!r} (bert, gpt2 or ligr)")
    bert = BertConfig(
        vocab_size=1,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.width * cfg.ffn_mult,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attn_dropout,
        max_position_embeddings=max_len,
        hidden_act="gelu",
    )
    bert._attn_implementation = "eager"
    return [BertLayer(bert, layer_idx=i) for i in range(cfg.layers)]


class InterestEncoder(nn.Module):
    """Sequence -> unit interest vector; item id hashes -> unit item vector."""

    def __init__(self, spec: FeatureSpec, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not a multiple of heads {cfg.heads}")
        self.spec = spec
        self.cfg = cfg
        w = cfg.width
        self.item_tables = nn.ModuleList(
            nn.Embedding(spec.hash_buckets, w, padding_idx=0) for _ in range(spec.n_hashes)
        )
        self.action_emb = nn.Embedding(spec.n_actions, w, padding_idx=0)
        self.platform_emb = nn.Embedding(spec.n_platforms, w, padding_idx=0)
        self.gap_emb = nn.Embedding(spec.n_gaps, w, padding_idx=0)
        self.pos_emb = nn.Embedding(spec.max_len, w)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(_blocks(cfg, spec.max_len))
        # Post-LN (BERT) normalises the embeddings first; pre-LN (GPT-2) normalises the output.
        self.emb_norm = nn.LayerNorm(w) if cfg.block == "bert" else nn.Identity()
        self.final_norm = nn.LayerNorm(w) if cfg.block in ("gpt2", "ligr") else nn.Identity()
        out = cfg.dim - 1 if cfg.item_bias else cfg.dim
        self.person_proj = nn.Linear(w, out)
        self.item_proj = nn.Linear(w, out)
        self.bias_tables = nn.ModuleList(
            nn.Embedding(spec.hash_buckets, 1, padding_idx=0)
            for _ in range(spec.n_hashes if cfg.item_bias else 0)
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_scale)))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def scale(self) -> torch.Tensor:
        """Logit scale (inverse temperature) for cosine scores, clamped for stability."""
        return self.log_scale.exp().clamp(max=100.0)

    def item_embedding(self, hashes: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the hashed tables: the shared item representation (width ``w``)."""
        emb = self.item_tables[0](hashes[0])
        for table, ids in zip(self.item_tables[1:], hashes[1:], strict=True):
            emb = emb + table(ids)
        return emb

    def item_vectors(self, *hashes: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[N, dim]`` from ``item_hash_k`` int64 ``[N]`` inputs.

        Cosine scoring: unit vectors.  With ``item_bias`` the last coordinate is
        the item's learned bias (how much more likely than its direction alone
        suggests, i.e. popularity), which the person vector's constant last
        coordinate turns into an additive score term.
        """
        vec = nn.functional.normalize(self.item_proj(self.item_embedding(list(hashes))), dim=-1)
        if self.cfg.item_bias:
            bias = self.bias_tables[0](hashes[0])
            for table, ids in zip(self.bias_tables[1:], hashes[1:], strict=True):
                bias = bias + table(ids)
            vec = torch.cat([vec, bias], dim=-1)
        return vec

    def hidden(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Hidden states ``[B, L, w]`` for inputs ordered as ``spec.input_names()``."""
        x, bias = self.embed(inputs)
        for layer in self.layers:
            x = self.block(layer, x, bias)
        return self.final_norm(x)

    def block(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One transformer block over ``x`` with the additive attention ``bias``."""
        out = layer(x, attention_mask=bias) if self.cfg.block == "gpt2" else layer(x, bias)
        return out[0] if isinstance(out, tuple) else out

    def embed(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' input ``[B, L, w]`` and the causal, padding-aware attention bias ``[B, 1, L, L]``."""
        k = self.spec.n_hashes
        hashes = inputs[:k]
        action, platform, gap, position, mask = inputs[k:]
        x = (
            self.item_embedding(hashes)
            + self.action_emb(action)
            + self.platform_emb(platform)
            + self.gap_emb(gap)
        )
        x = x + self.pos_emb(position)
        x = self.emb_drop(self.emb_norm(x))
        length = mask.shape[1]
        idx = torch.arange(length, device=mask.device)
        keys, queries = idx.unsqueeze(0), idx.unsqueeze(1)
        causal = keys <= queries  # [L(query), L(key)]
        allowed = (causal.unsqueeze(0) & (mask.unsqueeze(1) > 0)) | (keys == queries).unsqueeze(0)
        neg = torch.finfo(x.dtype).min
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        bias = torch.where(allowed, zero, torch.full((), neg, dtype=x.dtype, device=x.device))
        return x, bias.unsqueeze(1)  # [B, 1, L, L]

    def _person(self, hidden: torch.Tensor) -> torch.Tensor:
        """Person side of the score before the final normalisation."""
        vec = nn.functional.normalize(self.person_proj(hidden), dim=-1)
        if self.cfg.item_bias:
            vec = torch.cat([vec, torch.ones_like(vec[..., :1])], dim=-1)
        return vec

    def person_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unit person vector: the same ranking as training's scores, any scale removed."""
        return nn.functional.normalize(self._person(hidden), dim=-1)

    def person_for_scoring(self, hidden: torch.Tensor) -> torch.Tensor:
        """Training-time person side of the logits (ranking-equivalent to the unit vector)."""
        return self._person(hidden) * self.scale

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Unit interest vectors ``[B, dim]``: the exported ONNX graph."""
        hidden = self.hidden(list(inputs))
        return self.person_from_hidden(hidden[:, -1, :])


def build_encoder(spec: FeatureSpec, cfg: EncoderConfig) -> InterestEncoder:
    """A freshly initialised encoder (seed the RNG first for reproducibility)."""
    return InterestEncoder(spec, cfg)
