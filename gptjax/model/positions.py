"""Position information: learned table, rotary embeddings (NeoX and GPT-J layouts, partial), ALiBi.

Positions are explicit int arrays [B, T] everywhere so that decoding with a KV cache can pass
the absolute positions of new tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig


def rotary_angles(positions_BxT: jax.Array, rotary_dim: int, base: float) -> jax.Array:
    """Angles [B, T, rotary_dim/2]: position × base^(-2i/r), in float32 like the references."""
    exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
    inv_freq = 1.0 / (base ** exponents)
    return positions_BxT.astype(jnp.float32)[..., None] * inv_freq.reshape(1, 1, -1)


def _rotate_half(x: jax.Array) -> jax.Array:
    # NeoX layout: the rotated width is split into two halves (x1, x2) -> (-x2, x1).
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def _rotate_every_two(x: jax.Array) -> jax.Array:
    # GPT-J layout: adjacent pairs (x0, x1) -> (-x1, x0).
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([-x2, x1], axis=-1).reshape(x.shape)


def apply_rotary(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Rotate the first `cfg.resolved_rotary_dim` features of every head; the rest pass through."""
    r = cfg.resolved_rotary_dim
    angles = rotary_angles(positions_BxT, r, cfg.rotary_base)  # [B, T, r/2]
    if cfg.rotary_layout == "neox":
        angles = jnp.concatenate([angles, angles], axis=-1)
        rotate = _rotate_half
    else:
        angles = jnp.repeat(angles, 2, axis=-1)
        rotate = _rotate_every_two
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x_rot, x_pass = x_BxTxNxH[..., :r], x_BxTxNxH[..., r:]
    x32 = x_rot.astype(jnp.float32)
    rotated = (x32 * cos + rotate(x32) * sin).astype(x_BxTxNxH.dtype)
    return jnp.concatenate([rotated, x_pass], axis=-1)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """Per-head slopes of Press et al. (2022), with BLOOM's rule for head counts not a power of 2."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        n_extra = min(closest, n_heads - closest)
        slopes += [extra_base ** (2 * i + 1) for i in range(n_extra)]
    return np.asarray(slopes, np.float32)


def alibi_bias(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, n_heads: int) -> jax.Array:
    """Additive attention bias [B, N, T, S] = -slope × (query position - key position)."""
    slopes = jnp.asarray(alibi_slopes(n_heads)).reshape(1, -1, 1, 1)
    distance = (q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]).astype(jnp.float32)
    return -slopes * distance[:, None, :, :]
