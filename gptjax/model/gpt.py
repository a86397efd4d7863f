"""The GPT stack: embeddings, a stack of blocks applied with one scan (or unrolled), the head.

Shape legend: B batch, T positions, D d_model, V (padded) vocabulary, L layers; see
attention.py for the attention letters. Block parameters are always stored stacked with a
leading L axis (logical name "layers"), whether the forward pass scans or unrolls, so
checkpoints do not depend on that choice.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model.attention import EMPTY, Attention, LayerCache, layer_windows
from gptjax.model.kernels import ACTIVATION_AXES, REFERENCE, Kernels
from gptjax.model.layers import MLP, Dense, Embedding, Norm, dropout

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block on the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """One transformer layer; the residual layout is dispatched here and only here."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers) if cfg.scale_residual_init else cfg.init_std
        self.cfg = cfg
        self.ln1 = Norm(cfg, rngs=rngs)
        self.ln2 = Norm(cfg, rngs=rngs) if cfg.norms_per_block == 2 else None
        self.attn = Attention(cfg, out_std=out_std, rngs=rngs)
        self.mlp = MLP(cfg, out_std=out_std, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, window, key=None, cache=None, segments_BxT=None, **attention):
        """The layer's output; with a LayerCache, (output, updated (k, v)). `segments_BxT`: packed
        documents attend only within their own segment. `attention`: the call's kernels (Attention)."""
        cfg = self.cfg
        k_attn, k_res1, k_res2 = jax.random.split(key, 3) if key is not None else (None,) * 3
        new_kv = []

        def attn(h):
            out = self.attn(h, positions_BxT, window, k_attn, cache, segments_BxT, **attention)
            if cache is not None:
                out, kv = out
                new_kv.append(kv)
            return dropout(out, cfg.resid_dropout, k_res1)

        def mlp(h):
            return dropout(self.mlp(h), cfg.resid_dropout, k_res2)

        if cfg.residual == "post_ln":
            x_BxTxD = self.ln1(x_BxTxD + attn(x_BxTxD))
            out = self.ln2(x_BxTxD + mlp(x_BxTxD))
        elif cfg.residual == "pre_ln":
            x_BxTxD = x_BxTxD + attn(self.ln1(x_BxTxD))
            out = x_BxTxD + mlp(self.ln2(x_BxTxD))
        elif cfg.residual == "parallel_one_ln":
            h = self.ln1(x_BxTxD)
            out = x_BxTxD + attn(h) + mlp(h)
        else:  # parallel_two_ln
            out = x_BxTxD + attn(self.ln1(x_BxTxD)) + mlp(self.ln2(x_BxTxD))
        return out if cache is None else (out, new_kv[0])


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """n_layers blocks with parameters stacked on a leading "layers" axis."""
    keys = jax.random.split(rngs.params(), cfg.n_layers)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return Block(cfg, rngs=nnx.Rngs(params=key))

    blocks = make(keys)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Param):
            variable.set_metadata(axes=("layers",) + variable.get_metadata()["axes"])
    return blocks


class GPT(nnx.Module):
    """A decoder-only transformer of any supported family; see ModelConfig for the options.
    `kernels` (model.kernels.for_device, made by the caller) say how it runs on the devices at hand."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, kernels: Kernels = REFERENCE):
        self.cfg = cfg
        self.kernels = kernels
        self.embed = Embedding(cfg.padded_vocab, cfg, ("vocab", "embed"), std=cfg.init_std, rngs=rngs)
        self.pos_embed = Embedding(cfg.max_seq_len, cfg, ("position", "embed"), std=cfg.init_std, rngs=rngs) \
            if cfg.position == "learned" else None
        self.embed_norm = Norm(cfg, rngs=rngs) if cfg.embed_norm else None
        self.blocks = _stacked_blocks(cfg, rngs)
        self.final_norm = Norm(cfg, rngs=rngs) if cfg.final_norm else None
        self.head = None if cfg.tie_embeddings else Dense(
            (cfg.d_model,), (cfg.padded_vocab,), ("embed", "vocab"), bias=cfg.head_bias, cfg=cfg,
            std=cfg.init_std, rngs=rngs)

    def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None, *,
                 key: jax.Array | None = None) -> jax.Array:
        """Float32 logits [B, T, vocab_size]; the vocabulary padding is sliced off."""
        return self.logits(tokens_BxT, positions_BxT, key=key)[..., : self.cfg.vocab_size]

    def logits(self, tokens_BxT, positions_BxT=None, *, key=None, segments_BxT=None) -> jax.Array:
        """Float32 logits over the padded vocabulary [B, T, V]; padded entries hold the float32
        minimum so they never win a softmax or a sample, and a loss over them is exact. With
        `segments_BxT` (packed documents, ids per token) attention stays inside each segment."""
        return self._head(self.hidden(tokens_BxT, positions_BxT, key=key, segments_BxT=segments_BxT))

    def _head(self, x_BxTxD) -> jax.Array:
        logits = self.embed.attend(x_BxTxD) if self.head is None else self.head(x_BxTxD)
        logits = logits.astype(jnp.float32)
        if self.cfg.parametrization == "mup":
            logits = logits / self.cfg.width_mult  # MuReadout / MuSharedReadout's 1/m
        v = self.cfg.vocab_size
        if self.cfg.padded_vocab != v:
            real = (jnp.arange(self.cfg.padded_vocab) < v).reshape(1, 1, -1)
            logits = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
        return logits

    def decode(self, tokens_BxT, positions_BxT, cache: KVCache, key_positions_BxT=None,
               weights: DecodeWeights | None = None) -> tuple[jax.Array, KVCache]:
        """Logits [B, T, vocab_size] of new tokens written at `cache.slot` (their keys and values
        join the cache), and the updated cache. Prefill is one call over the prompt, then one per
        generated token. `key_positions_BxT` (default: the positions) is what later queries see
        of these slots: EMPTY hides one (padding). `weights`: the blocks' parameters per layer
        (default: sliced from the stacked ones), see DecodeWeights."""
        recorded = positions_BxT if key_positions_BxT is None else key_positions_BxT
        key_positions = jax.lax.dynamic_update_slice(cache.key_positions, recorded.astype(jnp.int32),
                                                     (0, cache.slot))
        cache = dataclasses.replace(cache, key_positions=key_positions)
        weights = DecodeWeights.of(self) if weights is None else weights
        x = self._embed(tokens_BxT, positions_BxT, None)
        choice = self.kernels.attention_for(plain_causal=False, dropout=False)
        graphdef = nnx.graphdef(self.blocks)
        ks, vs = [], []
        for i, window in enumerate(self._windows()):
            block = nnx.merge(graphdef, weights.layers[i])
            layer_cache = LayerCache(cache.k[i], cache.v[i], cache.key_positions, cache.slot)
            x, (k, v) = block(x, positions_BxT, window, None, layer_cache, impl=choice.impl)
            ks.append(k)
            vs.append(v)
        x = self.final_norm(x) if self.final_norm is not None else x
        logits = self._head(x)[..., : self.cfg.vocab_size]
        return logits, dataclasses.replace(cache, k=tuple(ks), v=tuple(vs), slot=cache.slot + tokens_BxT.shape[1])

    def hidden(self, tokens_BxT, positions_BxT=None, *, key=None, segments_BxT=None) -> jax.Array:
        """Final hidden states [B, T, D] (after the final norm). `key` enables dropout."""
        cfg = self.cfg
        plain = positions_BxT is None and segments_BxT is None  # the mask is plain causal
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        k_embed, k_layers = jax.random.split(key) if key is not None else (None, None)
        x = self._embed(tokens_BxT, positions_BxT, k_embed)
        choice = self.kernels.attention_for(plain_causal=plain, dropout=key is not None and cfg.attn_dropout > 0.0)
        x = self._apply_blocks(x, positions_BxT, k_layers, segments_BxT, impl=choice.impl,
                               fuse_qkv=self.kernels.fuse_qkv, pallas=self.kernels.pallas)
        return self.final_norm(x) if self.final_norm is not None else x

    def _embed(self, tokens_BxT, positions_BxT, key):
        x = self.embed(tokens_BxT, self.kernels.constrain)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions_BxT, self.kernels.constrain)
        x = dropout(x, self.cfg.embed_dropout, key)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.kernels.constrain(x, ACTIVATION_AXES)

    def _windows(self) -> np.ndarray:
        return layer_windows(self.cfg)

    def _apply_blocks(self, x, positions_BxT, key, segments_BxT, **attention):
        """The stack, scanned or unrolled over the stacked parameters."""
        cfg = self.cfg
        graphdef, state = nnx.split(self.blocks)
        keys = jax.random.split(key, cfg.n_layers) if key is not None else None

        def body(x, layer):
            layer_state, window, layer_key = layer
            x = nnx.merge(graphdef, layer_state)(x, positions_BxT, window, layer_key, None, segments_BxT, **attention)
            return self.kernels.constrain(x, ACTIVATION_AXES), None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        layers = (state, jnp.asarray(self._windows()), keys)
        if cfg.scan_layers:
            return jax.lax.scan(body, x, layers)[0]
        for i in range(cfg.n_layers):
            x, _ = body(x, jax.tree.map(lambda a: a[i], layers))
        return x


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeWeights:
    """The blocks' parameters one layer at a time, which decoding unrolls over. Made inside a
    compiled function, the per-layer arrays are slices of the stacked weights (no copy on
    accelerators). Made outside, they are copies, which CPU decoding wants: there a matrix-vector
    product over a slice of the stacked [L, ...] weights, scanned or indexed, reads them at a half
    or less of the bandwidth it reaches on a whole array (measured: 12 layers of 768x3072, 15.1 ms
    scanned, 79 ms indexed, 8.6 ms separate)."""

    layers: tuple

    @classmethod
    def of(cls, model: GPT) -> DecodeWeights:
        state = nnx.state(model.blocks)
        return cls(tuple(jax.tree.map(lambda a, i=i: a[i], state) for i in range(model.cfg.n_layers)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer, one [B, S, K, H] buffer per layer (a stacked cache would be
    sliced and re-stacked, that is copied whole, for every token); the position of each slot's
    token [B, S] (EMPTY where none); the next slot to write (a scalar)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    key_positions: jax.Array
    slot: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
        layer = (batch, slots, cfg.resolved_kv_heads, cfg.resolved_head_dim)
        k = tuple(jnp.zeros(layer, dtype) for _ in range(cfg.n_layers))
        v = tuple(jnp.zeros(layer, dtype) for _ in range(cfg.n_layers))
        return cls(k, v, jnp.full((batch, slots), EMPTY, jnp.int32), jnp.zeros((), jnp.int32))


def init_model(cfg: ModelConfig, seed: int = 0, kernels: Kernels = REFERENCE) -> GPT:
    return GPT(cfg, rngs=nnx.Rngs(params=seed), kernels=kernels)


def abstract_model(cfg: ModelConfig, kernels: Kernels = REFERENCE) -> GPT:
    """The model with ShapeDtypeStructs in place of weights: nothing is allocated."""
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0), kernels=kernels))

