"""Causal self-attention: dense or banded (local) per layer, MHA/GQA/MQA, rotary or ALiBi.

Shape legend (shared with gpt.py): B batch, T query positions, S key positions, D d_model,
N query heads, K key/value heads, G = N/K query heads per key head, H head width.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model import positions as pos_lib
from gptjax.model.layers import Dense, dense_group, dropout

# Window of a global layer: larger than any distance between two positions.
GLOBAL_WINDOW = 2**30
# Position of a cache slot holding no key (not yet written, or padding): beyond every query, so
# the causal mask hides it.
EMPTY = 2**30


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
    """One layer's keys and values for decoding: [B, S, K, H] each, the position of the token in
    each slot [B, S] (EMPTY where none), and the slot the next keys go to."""

    k: jax.Array
    v: jax.Array
    key_positions: jax.Array
    slot: jax.Array


def layer_windows(cfg: ModelConfig) -> np.ndarray:
    """Each layer's attention window: cfg.local_window for banded layers, GLOBAL_WINDOW for dense."""
    return np.array([cfg.local_window if k == "local" else GLOBAL_WINDOW for k in cfg.layer_kinds], np.int32)


def causal_mask(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, window: jax.Array | int) -> jax.Array:
    """[B, T, S] True where a query may see a key: not in its future and fewer than `window` back.

    GPT-Neo's local layers see keys j with i - window < j <= i; a global layer uses GLOBAL_WINDOW.
    `window` may be traced, so scanned layers of different kinds share one compiled body.
    """
    delta = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
    return (delta >= 0) & (delta < window)


def reference_attention(q, k, v, *, mask_BxTxS, bias_BxNxTxS, scale, probs_dropout=0.0, key=None):
    """Plain einsum attention in float32: the readable reference, and the path that supports
    dropout on attention probabilities (GPT-2's attn_pdrop)."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    q5 = q.reshape(b, t, kv, n // kv, h).astype(jnp.float32)
    if t == 1 and (key is None or probs_dropout == 0.0):  # one decoding step: see _one_query_attention
        return _one_query_attention(q5, k, v, mask_BxTxS, bias_BxNxTxS, scale).reshape(b, t, n, h).astype(q.dtype)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q5, k.astype(jnp.float32)) * scale
    if bias_BxNxTxS is not None:
        logits = logits + bias_BxNxTxS.reshape(b, kv, n // kv, t, -1)
    logits = jnp.where(mask_BxTxS[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = dropout(probs, probs_dropout, key)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    return out.reshape(b, t, n, h).astype(q.dtype)


def _one_query_attention(q_Bx1xKxGxH, k, v, mask_BxTxS, bias_BxNxTxS, scale):
    """A single query against the cache, as broadcast products summed over H and then over S.
    As dots, XLA:CPU first copies the cache into [B, K, S, H] (its batch dims leading) for every
    layer and token: 19.5 of 74 ms per token for gpt2 at batch 8. These fuse into loops that read
    the cache once where it lies."""
    b, _, kv, g, h = q_Bx1xKxGxH.shape
    q = q_Bx1xKxGxH[:, 0]  # [B, K, G, H]
    logits = jnp.sum(q[:, None] * k.astype(jnp.float32)[:, :, :, None, :], axis=-1) * scale  # [B, S, K, G]
    if bias_BxNxTxS is not None:
        logits = logits + jnp.moveaxis(bias_BxNxTxS[:, :, 0].reshape(b, kv, g, -1), -1, 1)
    logits = jnp.where(mask_BxTxS[:, 0, :, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=1)
    return jnp.sum(probs[..., None] * v.astype(jnp.float32)[:, :, :, None, :], axis=1)  # [B, K, G, H]


def fused_attention(q, k, v, *, mask_BxTxS, bias_BxNxTxS, scale, implementation, causal=False):
    """jax.nn.dot_product_attention: XLA's fused path, or cuDNN flash attention on NVIDIA GPUs.

    `causal` replaces the mask by the kernel's own causal flag (query i sees keys 0..i), valid
    only when queries and keys are the same contiguous positions: the form cuDNN's flash kernel
    needs to skip the masked blocks instead of reading a [B, T, S] mask."""
    mask = None if causal else mask_BxTxS[:, None, :, :]
    return jax.nn.dot_product_attention(q, k, v, bias=bias_BxNxTxS, mask=mask, scale=scale, is_causal=causal,
                                        implementation=implementation)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        d, n, kv, h = cfg.d_model, cfg.n_heads, cfg.resolved_kv_heads, cfg.resolved_head_dim
        common = dict(cfg=cfg, rngs=rngs)
        # μP: hidden matrices start at std / sqrt(m), and queries at zero (the mup package's
        # Transformer recipe, so that attention starts uniform at every width).
        std = cfg.init_std / math.sqrt(cfg.width_mult)
        out_std = out_std / math.sqrt(cfg.width_mult)
        q_std = 0.0 if cfg.parametrization == "mup" else std
        self.cfg = cfg
        self.q = Dense((d,), (n, h), ("embed", "heads", "head_dim"), bias=cfg.qkv_bias, std=q_std, **common)
        self.k = Dense((d,), (kv, h), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, std=std, **common)
        self.v = Dense((d,), (kv, h), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, std=std, **common)
        self.o = Dense((n, h), (d,), ("heads", "head_dim", "embed"), bias=cfg.out_bias, std=out_std, **common)

    def __call__(self, x_BxTxD, positions_BxT, window, key=None, cache=None, segments_BxT=None, *,
                 impl: str = "einsum", fuse_qkv: bool = False, pallas=None):
        """Self-attention over the new positions, or, with `cache` (LayerCache), over every
        cached key as well: the new keys and values are written at `cache.slot`, and the cache's
        key positions decide what each query sees. Returns the output, and the updated (k, v)
        when a cache is given. `impl`, `fuse_qkv` and `pallas` (static) are the caller's Kernels for
        this call: "cudnn" and "pallas" only where the mask is plain causal, so the kernel's own
        causal mask (banded by `window` for pallas) replaces it."""
        cfg = self.cfg
        layers = (self.q, self.k, self.v)
        q, k, v = dense_group(layers, x_BxTxD) if fuse_qkv else [m(x_BxTxD) for m in layers]
        if cfg.position == "rotary":
            q = pos_lib.apply_rotary(q, positions_BxT, cfg)
            k = pos_lib.apply_rotary(k, positions_BxT, cfg)
        key_positions = positions_BxT
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, cache.slot, 0, 0))
            v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, cache.slot, 0, 0))
            key_positions = cache.key_positions  # unwritten and padding slots hold EMPTY: never seen
        mask = causal_mask(positions_BxT, key_positions, window)
        if segments_BxT is not None:  # packed documents: no attention across a boundary
            mask = mask & (segments_BxT[:, :, None] == segments_BxT[:, None, :])
        bias = None
        if cfg.position == "alibi":
            bias = pos_lib.alibi_bias(positions_BxT, key_positions, cfg.n_heads)
        if impl == "pallas":
            windows = tuple(sorted({int(w) for w in layer_windows(cfg)}))
            out = self.o(pallas(q, k, v, window=window, windows=windows, scale=cfg.softmax_scale))
        else:
            out = self.o(self._attend(q, k, v, mask, bias, key, impl))
        return out if cache is None else (out, (k, v))

    def _attend(self, q, k, v, mask, bias, key, impl):
        cfg = self.cfg
        if impl == "einsum":
            return reference_attention(q, k, v, mask_BxTxS=mask, bias_BxNxTxS=bias,
                                       scale=cfg.softmax_scale, probs_dropout=cfg.attn_dropout, key=key)
        if impl == "cudnn":
            return fused_attention(q, k, v, mask_BxTxS=mask, bias_BxNxTxS=bias, scale=cfg.softmax_scale,
                                   implementation="cudnn", causal=True)
        return fused_attention(q, k, v, mask_BxTxS=mask, bias_BxNxTxS=bias, scale=cfg.softmax_scale,
                               implementation=None)
