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
from gptjax.model.attention import EMPTY, GLOBAL_WINDOW, Attention, LayerCache
from gptjax.model.layers import MLP, Dense, Embedding, Norm, dropout
from gptjax.runtime import sharding

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

    def __call__(self, x_BxTxD, positions_BxT, window, key=None, cache=None, segments_BxT=None, aligned=False):
        """The layer's output; with a LayerCache, (output, updated (k, v)). `segments_BxT`: packed
        documents attend only within their own segment. `aligned`: see Attention."""
        cfg = self.cfg
        k_attn, k_res1, k_res2 = jax.random.split(key, 3) if key is not None else (None,) * 3
        new_kv = []

        def attn(h):
            out = self.attn(h, positions_BxT, window, k_attn, cache, segments_BxT, aligned)
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
    """A decoder-only transformer of any supported family; see ModelConfig for the options."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
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
               layers=None) -> tuple[jax.Array, KVCache]:
        """Logits [B, T, vocab_size] of new tokens written at `cache.slot` (their keys and values
        join the cache), and the updated cache. Prefill is one call over the prompt, then one per
        generated token. `key_positions_BxT` (default: the positions) is what later queries see
        of these slots: EMPTY hides one (padding). `layers` (from `unstacked_layers`) runs the
        stack unrolled over separate per-layer arrays instead of the stacked parameters."""
        recorded = positions_BxT if key_positions_BxT is None else key_positions_BxT
        key_positions = jax.lax.dynamic_update_slice(cache.key_positions, recorded.astype(jnp.int32),
                                                     (0, cache.slot))
        cache = dataclasses.replace(cache, key_positions=key_positions)
        x, (k, v) = self._hidden(tokens_BxT, positions_BxT, None, cache, layers)
        logits = self._head(x)[..., : self.cfg.vocab_size]
        t = tokens_BxT.shape[1]
        return logits, dataclasses.replace(cache, k=k, v=v, slot=cache.slot + t)

    def hidden(self, tokens_BxT, positions_BxT=None, *, key=None, segments_BxT=None) -> jax.Array:
        """Final hidden states [B, T, D] (after the final norm). `key` enables dropout."""
        return self._hidden(tokens_BxT, positions_BxT, key, None, segments_BxT=segments_BxT)

    def _hidden(self, tokens_BxT, positions_BxT, key, cache, layers=None, segments_BxT=None):
        cfg = self.cfg
        aligned = positions_BxT is None and cache is None and segments_BxT is None  # plain causal mask
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        k_embed, k_layers = jax.random.split(key) if key is not None else (None, None)
        x = self.embed(tokens_BxT)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions_BxT)
        x = dropout(x, cfg.embed_dropout, k_embed)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = sharding.constrain_activations(x)
        x, kv = self._apply_blocks(x, positions_BxT, k_layers, cache, layers, segments_BxT, aligned)
        x = self.final_norm(x) if self.final_norm is not None else x
        return x if cache is None else (x, kv)

    def _apply_blocks(self, x, positions_BxT, key, cache, layers=None, segments_BxT=None, aligned=False):
        """The stack, scanned or unrolled; with a KVCache also each layer's updated (k, v),
        stacked [L, ...] like the parameters. `layers`: per-layer states to unroll over."""
        cfg = self.cfg
        graphdef, state = nnx.split(self.blocks)
        windows = jnp.asarray(
            np.array([cfg.local_window if k == "local" else GLOBAL_WINDOW for k in cfg.layer_kinds], np.int32))
        keys = jax.random.split(key, cfg.n_layers) if key is not None else None
        kv = (cache.k, cache.v) if cache is not None else None

        def body(x, layer):
            layer_state, window, layer_key, layer_kv = layer
            block = nnx.merge(graphdef, layer_state)
            if layer_kv is None:
                x = block(x, positions_BxT, window, layer_key, segments_BxT=segments_BxT, aligned=aligned)
                return sharding.constrain_activations(x), None
            layer_cache = LayerCache(layer_kv[0], layer_kv[1], cache.key_positions, cache.slot)
            return block(x, positions_BxT, window, layer_key, layer_cache)

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers and layers is None:
            return jax.lax.scan(body, x, (state, windows, keys, kv))
        per_layer = cache is not None and isinstance(cache.k, tuple)
        outs = []
        for i in range(cfg.n_layers):
            layer_state = layers[i] if layers is not None else jax.tree.map(lambda a: a[i], state)
            layer_kv = (cache.k[i], cache.v[i]) if per_layer else jax.tree.map(lambda a: a[i], kv)
            x, out = body(x, (layer_state, *jax.tree.map(lambda a: a[i], (windows, keys)), layer_kv))
            outs.append(out)
        if cache is None:
            return x, None
        if per_layer:  # each layer's buffer updated where it lies: nothing is copied
            return x, (tuple(k for k, _ in outs), tuple(v for _, v in outs))
        return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)


def unstacked_layers(model: GPT) -> list:
    """Each layer's parameters as separate arrays (copies), for decoding on CPU: there a matrix-
    vector product over a slice of the stacked [L, ...] weights, scanned or indexed, reads them
    at a half or less of the bandwidth it reaches on a whole array (measured: 12 layers of
    768x3072, 15.1 ms scanned, 79 ms indexed, 8.6 ms separate)."""
    _, state = nnx.split(model.blocks)
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(model.cfg.n_layers)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer, stacked like the parameters: [L, B, S, K, H], or (with
    `per_layer`, for decoding over `unstacked_layers`) a tuple of L arrays [B, S, K, H]; the
    position of each slot's token [B, S] (EMPTY where none); the next slot to write (a scalar)."""

    k: jax.Array
    v: jax.Array
    key_positions: jax.Array
    slot: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, slots: int, dtype=jnp.float32, per_layer: bool = False) -> KVCache:
        """Per-layer buffers suit the unrolled decode: a stacked cache is sliced per layer and
        re-stacked every token, copying the whole cache (at batch 8, most of gpt2's decode step)."""
        layer = (batch, slots, cfg.resolved_kv_heads, cfg.resolved_head_dim)
        if per_layer:
            k = tuple(jnp.zeros(layer, dtype) for _ in range(cfg.n_layers))
            v = tuple(jnp.zeros(layer, dtype) for _ in range(cfg.n_layers))
        else:
            k, v = jnp.zeros((cfg.n_layers, *layer), dtype), jnp.zeros((cfg.n_layers, *layer), dtype)
        return cls(k, v, jnp.full((batch, slots), EMPTY, jnp.int32), jnp.zeros((), jnp.int32))


def init_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    return GPT(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> GPT:
    """The model with ShapeDtypeStructs in place of weights: nothing is allocated."""
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0)))

