"""The GPT stack: embeddings, a stack of blocks applied with one scan (or unrolled), the head.

Shape legend: B batch, T positions, D d_model, V (padded) vocabulary, L layers; see
attention.py for the attention letters. Block parameters are always stored stacked with a
leading L axis (logical name "layers"), whether the forward pass scans or unrolls, so
checkpoints do not depend on that choice.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.attention import GLOBAL_WINDOW, Attention
from gptjax.config import ModelConfig
from gptjax.layers import MLP, Dense, Embedding, Norm, dropout

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

    def __call__(self, x_BxTxD, positions_BxT, window, key=None):
        cfg = self.cfg
        k_attn, k_res1, k_res2 = jax.random.split(key, 3) if key is not None else (None,) * 3

        def attn(h):
            return dropout(self.attn(h, positions_BxT, window, k_attn), cfg.resid_dropout, k_res1)

        def mlp(h):
            return dropout(self.mlp(h), cfg.resid_dropout, k_res2)

        if cfg.residual == "post_ln":
            x_BxTxD = self.ln1(x_BxTxD + attn(x_BxTxD))
            return self.ln2(x_BxTxD + mlp(x_BxTxD))
        if cfg.residual == "pre_ln":
            x_BxTxD = x_BxTxD + attn(self.ln1(x_BxTxD))
            return x_BxTxD + mlp(self.ln2(x_BxTxD))
        if cfg.residual == "parallel_one_ln":
            h = self.ln1(x_BxTxD)
            return x_BxTxD + attn(h) + mlp(h)
        return x_BxTxD + attn(self.ln1(x_BxTxD)) + mlp(self.ln2(x_BxTxD))  # parallel_two_ln


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

    def logits(self, tokens_BxT, positions_BxT=None, *, key=None) -> jax.Array:
        """Float32 logits over the padded vocabulary [B, T, V]; padded entries hold the float32
        minimum so they never win a softmax or a sample, and a loss over them is exact."""
        x = self.hidden(tokens_BxT, positions_BxT, key=key)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        logits = logits.astype(jnp.float32)
        if self.cfg.parametrization == "mup":
            logits = logits / self.cfg.width_mult  # MuReadout / MuSharedReadout's 1/m
        v = self.cfg.vocab_size
        if self.cfg.padded_vocab != v:
            real = (jnp.arange(self.cfg.padded_vocab) < v).reshape(1, 1, -1)
            logits = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
        return logits

    def hidden(self, tokens_BxT, positions_BxT=None, *, key=None) -> jax.Array:
        """Final hidden states [B, T, D] (after the final norm). `key` enables dropout."""
        cfg = self.cfg
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        k_embed, k_layers = jax.random.split(key) if key is not None else (None, None)
        x = self.embed(tokens_BxT)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions_BxT)
        x = dropout(x, cfg.embed_dropout, k_embed)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self._apply_blocks(x, positions_BxT, k_layers)
        return self.final_norm(x) if self.final_norm is not None else x

    def _apply_blocks(self, x, positions_BxT, key):
        cfg = self.cfg
        graphdef, state = nnx.split(self.blocks)
        windows = jnp.asarray(
            np.array([cfg.local_window if k == "local" else GLOBAL_WINDOW for k in cfg.layer_kinds], np.int32))
        keys = jax.random.split(key, cfg.n_layers) if key is not None else None

        def body(x, layer):
            layer_state, window, layer_key = layer
            return nnx.merge(graphdef, layer_state)(x, positions_BxT, window, layer_key), None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x, _ = jax.lax.scan(body, x, (state, windows, keys))
            return x
        for i in range(cfg.n_layers):
            x, _ = body(x, jax.tree.map(lambda a: a[i], (state, windows, keys)))
        return x


def init_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    return GPT(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> GPT:
    """The model with ShapeDtypeStructs in place of weights: nothing is allocated."""
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0)))

