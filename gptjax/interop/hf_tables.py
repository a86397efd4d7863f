"""Hugging Face tensor tables: each model type's (HF tensor name, our parameter paths, transform)
rows, and the transforms between HF's layouts and ours. Export runs a table backwards, and every
transform's two directions are exact inverses, so HF -> gptjax -> HF is lossless.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------
# Tensor transforms: HF layout <-> our per-layer layout. `shapes` are our per-layer shapes with
# the vocabulary axis at its unpadded size.
# --------------------------------------------------------------------------------------------

def _matrix(shape: tuple[int, ...], n_in: int) -> tuple[int, ...]:
    """Our Dense kernel flattened to [in, out] (n_in leading dims are inputs); a vector when n_in is 0."""
    if n_in == 0:
        return (math.prod(shape),)
    return (math.prod(shape[:n_in]), math.prod(shape[n_in:]))


@dataclasses.dataclass(frozen=True)
class Copy:
    """HF stores [in, out] like we do (GPT-2's Conv1D, embeddings, norms, biases): only a reshape."""

    n_in: int

    def hf_shape(self, shapes):
        return _matrix(shapes[0], self.n_in)

    def to_ours(self, x, shapes):
        return (x.reshape(shapes[0]),)

    def to_hf(self, ys):
        return ys[0].reshape(_matrix(ys[0].shape, self.n_in))


@dataclasses.dataclass(frozen=True)
class Linear:
    """torch.nn.Linear weight [out, in]: transposed."""

    n_in: int

    def hf_shape(self, shapes):
        return _matrix(shapes[0], self.n_in)[::-1]

    def to_ours(self, x, shapes):
        return (x.T.reshape(shapes[0]),)

    def to_hf(self, ys):
        return ys[0].reshape(_matrix(ys[0].shape, self.n_in)).T


@dataclasses.dataclass(frozen=True)
class SplitColumns:
    """GPT-2's c_attn: Conv1D [D, 3*D] (or bias [3*D]) holding q | k | v as consecutive column blocks."""

    n_in: int

    def hf_shape(self, shapes):
        parts = [_matrix(s, self.n_in) for s in shapes]
        return parts[0][:-1] + (sum(p[-1] for p in parts),)

    def to_ours(self, x, shapes):
        sizes = np.cumsum([_matrix(s, self.n_in)[-1] for s in shapes])[:-1]
        return tuple(part.reshape(s) for part, s in zip(np.split(x, sizes, axis=-1), shapes))

    def to_hf(self, ys):
        return np.concatenate([y.reshape(_matrix(y.shape, self.n_in)) for y in ys], axis=-1)


@dataclasses.dataclass(frozen=True)
class HeadInterleaved:
    """NeoX/BLOOM query_key_value: Linear weight [N*3*H, D] (or bias [N*3*H]) whose output axis is
    laid out [heads, (q, k, v), head_dim], not [(q, k, v), heads, head_dim]."""

    n_in: int  # 1 for the weight (our [D, N, H]), 0 for the bias (our [N, H])

    def hf_shape(self, shapes):
        n, h = shapes[0][self.n_in:]
        return (n * 3 * h, shapes[0][0]) if self.n_in else (n * 3 * h,)

    def to_ours(self, x, shapes):
        n, h = shapes[0][self.n_in:]
        x = x.reshape((n, 3, h) + x.shape[1:])  # [N, 3, H(, D)]
        return tuple(np.moveaxis(x[:, j], -1, 0) if self.n_in else x[:, j] for j in range(3))

    def to_hf(self, ys):
        heads_first = [np.moveaxis(y, 0, -1) if self.n_in else y for y in ys]  # [N, H(, D)]
        stacked = np.stack(heads_first, axis=1)  # [N, 3, H(, D)]
        return stacked.reshape((-1,) + stacked.shape[3:])


VECTOR, EMBEDDING, CONV1D, CONV1D_FROM_HEADS = Copy(0), Copy(1), Copy(1), Copy(2)
LINEAR, LINEAR_FROM_HEADS = Linear(1), Linear(2)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor ({i}: layer index) and the parameter(s) of ours it holds."""

    hf: str
    ours: tuple[str, ...]
    transform: Any = VECTOR
    aliases: tuple[str, ...] = ()  # older names accepted on import; export writes `hf`

    def names(self, layer: int | None) -> tuple[str, ...]:
        return tuple(n.format(i=layer) for n in (self.hf,) + self.aliases)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _r(hf: str, ours: str | tuple[str, ...], transform: Any = VECTOR, aliases: tuple[str, ...] = ()) -> Rule:
    return Rule(hf, (ours,) if isinstance(ours, str) else ours, transform, aliases)


def _norm(hf: str, ours: str) -> tuple[Rule, ...]:
    return _r(f"{hf}.weight", f"{ours}.scale"), _r(f"{hf}.bias", f"{ours}.bias")


def _dense(hf: str, ours: str, transform: Any) -> tuple[Rule, ...]:
    return _r(f"{hf}.weight", f"{ours}.kernel", transform), _r(f"{hf}.bias", f"{ours}.bias")


_QKV = ("blocks.attn.q", "blocks.attn.k", "blocks.attn.v")


def gpt2(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), _r(f"{p}.wpe.weight", "pos_embed.table", EMBEDDING),
        *_norm(f"{h}.ln_1", "blocks.ln1"),
        _r(f"{h}.attn.c_attn.weight", tuple(f"{q}.kernel" for q in _QKV), SplitColumns(1)),
        _r(f"{h}.attn.c_attn.bias", tuple(f"{q}.bias" for q in _QKV), SplitColumns(0)),
        *_dense(f"{h}.attn.c_proj", "blocks.attn.o", CONV1D_FROM_HEADS),
        *_norm(f"{h}.ln_2", "blocks.ln2"),
        *_dense(f"{h}.mlp.c_fc", "blocks.mlp.up", CONV1D), *_dense(f"{h}.mlp.c_proj", "blocks.mlp.down", CONV1D),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def neo(p: str) -> tuple[Rule, ...]:
    h, a = f"{p}.h.{{i}}", f"{p}.h.{{i}}.attn.attention"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), _r(f"{p}.wpe.weight", "pos_embed.table", EMBEDDING),
        *_norm(f"{h}.ln_1", "blocks.ln1"),
        *(_r(f"{a}.{x}_proj.weight", f"blocks.attn.{x}.kernel", LINEAR) for x in "qkv"),
        *_dense(f"{a}.out_proj", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_norm(f"{h}.ln_2", "blocks.ln2"),
        *_dense(f"{h}.mlp.c_fc", "blocks.mlp.up", LINEAR), *_dense(f"{h}.mlp.c_proj", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def gptj(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.wte.weight", "embed.table", EMBEDDING), *_norm(f"{h}.ln_1", "blocks.ln1"),
        *(_r(f"{h}.attn.{x}_proj.weight", f"blocks.attn.{x}.kernel", LINEAR) for x in "qkv"),
        _r(f"{h}.attn.out_proj.weight", "blocks.attn.o.kernel", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.fc_in", "blocks.mlp.up", LINEAR), *_dense(f"{h}.mlp.fc_out", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), *_dense("lm_head", "head", LINEAR),
    )


def _fused_qkv(hf: str) -> tuple[Rule, ...]:
    return (_r(f"{hf}.weight", tuple(f"{q}.kernel" for q in _QKV), HeadInterleaved(1)),
            _r(f"{hf}.bias", tuple(f"{q}.bias" for q in _QKV), HeadInterleaved(0)))


def neox(p: str) -> tuple[Rule, ...]:
    h = f"{p}.layers.{{i}}"
    return (
        _r(f"{p}.embed_in.weight", "embed.table", EMBEDDING),
        *_norm(f"{h}.input_layernorm", "blocks.ln1"), *_norm(f"{h}.post_attention_layernorm", "blocks.ln2"),
        *_fused_qkv(f"{h}.attention.query_key_value"),
        *_dense(f"{h}.attention.dense", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.dense_h_to_4h", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.dense_4h_to_h", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.final_layer_norm", "final_norm"),
        # embed_out is the name every transformers version loads (5.x renames it to lm_head).
        _r("embed_out.weight", "head.kernel", LINEAR, aliases=("lm_head.weight",)),
    )


def llama(p: str) -> tuple[Rule, ...]:
    h = f"{p}.layers.{{i}}"
    return (
        _r(f"{p}.embed_tokens.weight", "embed.table", EMBEDDING),
        _r(f"{h}.input_layernorm.weight", "blocks.ln1.scale"),
        _r(f"{h}.post_attention_layernorm.weight", "blocks.ln2.scale"),
        *(r for x in "qkv" for r in _dense(f"{h}.self_attn.{x}_proj", f"blocks.attn.{x}", LINEAR)),
        *_dense(f"{h}.self_attn.o_proj", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.gate_proj", "blocks.mlp.gate", LINEAR), *_dense(f"{h}.mlp.up_proj", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.down_proj", "blocks.mlp.down", LINEAR),
        _r(f"{p}.norm.weight", "final_norm.scale"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


def bloom(p: str) -> tuple[Rule, ...]:
    h = f"{p}.h.{{i}}"
    return (
        _r(f"{p}.word_embeddings.weight", "embed.table", EMBEDDING),
        *_norm(f"{p}.word_embeddings_layernorm", "embed_norm"),
        *_norm(f"{h}.input_layernorm", "blocks.ln1"), *_norm(f"{h}.post_attention_layernorm", "blocks.ln2"),
        *_fused_qkv(f"{h}.self_attention.query_key_value"),
        *_dense(f"{h}.self_attention.dense", "blocks.attn.o", LINEAR_FROM_HEADS),
        *_dense(f"{h}.mlp.dense_h_to_4h", "blocks.mlp.up", LINEAR),
        *_dense(f"{h}.mlp.dense_4h_to_h", "blocks.mlp.down", LINEAR),
        *_norm(f"{p}.ln_f", "final_norm"), _r("lm_head.weight", "head.kernel", LINEAR),
    )


