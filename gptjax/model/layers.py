"""Leaf modules: dense and embedding layers with logical axis names, norms, MLP variants.

Every parameter is an `nnx.Param` carrying `axes`, a tuple of logical axis names, one per
dimension. Only sharding.py maps those names onto mesh axes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import ModelConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: tuple[str, ...], dtype, std: float | None):
    """A parameter drawn from N(0, std²), or ones when std is None and zeros when std == 0."""
    if len(shape) != len(axes):
        raise ValueError(f"parameter of shape {tuple(shape)} needs {len(shape)} axis names, got {axes}")
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


def trailing(v: jax.Array, ndim: int) -> jax.Array:
    """v reshaped to broadcast over the trailing dims of a rank-`ndim` array (rank promotion raises)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + trailing(bias, y.ndim)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when key is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def matmul_2d(x: jax.Array, kernel: jax.Array, n_contract: int) -> jax.Array:
    """x's trailing `n_contract` dims times kernel's leading ones, as one 2-D matmul.

    XLA:CPU runs the weight gradient of a dot with several batch-like dims (B, T) about 4x
    slower than the same product flattened to [B·T, in] @ [in, out] (measured on the MLP of
    experiments/shakespeare_char.yaml); the reshapes keep sharded dims major, so GSPMD keeps them.
    """
    lead, contract = x.shape[: x.ndim - n_contract], x.shape[x.ndim - n_contract:]
    out = kernel.shape[n_contract:]
    k_in = math.prod(contract)
    y = x.reshape(-1, k_in) @ kernel.reshape(k_in, math.prod(out))
    return y.reshape(lead + out)


class Dense(nnx.Module):
    """Contracts the trailing `len(in_shape)` dims of x with a kernel of shape in_shape + out_shape."""

    def __init__(self, in_shape, out_shape, axes, *, bias: bool, cfg: ModelConfig, std: float,
                 rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        dtype = DTYPES[cfg.param_dtype]
        self.compute_dtype = DTYPES[cfg.compute_dtype]
        self.kernel = param(rngs, self.in_shape + self.out_shape, tuple(axes), dtype, std)
        out_axes = tuple(axes)[len(self.in_shape):]
        self.bias = param(rngs, self.out_shape, out_axes, dtype, 0.0) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(self.compute_dtype)
        y = matmul_2d(x.astype(self.compute_dtype), k, len(self.in_shape))
        if self.bias is not None:
            y = add_bias(y, self.bias[...].astype(self.compute_dtype))
        return y


def dense_group(layers: Sequence[Dense], x: jax.Array) -> list[jax.Array]:
    """Several Dense layers over the same input as one matmul, their kernels concatenated along the
    outputs. For q, k and v: on CPU the Shakespeare train step runs 4% faster, forward and
    backward; in the TPU compiler's program for MaxText's gpt3-6b shape (fsdp=4 on v5p-8) FSDP
    gathers one kernel per layer instead of three and, in the backward pass, once instead of twice
    (all-gathers 18 -> 11, temporaries 12.54 -> 12.33 GiB; benchmarks/maxtext). Heads split over
    `tensor` keep separate products (model.kernels.for_device's heads_split)."""
    n_in, dtype = len(layers[0].in_shape), layers[0].compute_dtype
    k_in = math.prod(layers[0].in_shape)
    kernel = jnp.concatenate([m.kernel[...].astype(dtype).reshape(k_in, -1) for m in layers], axis=1)
    y = matmul_2d(x.astype(dtype), kernel, n_in)
    widths = [math.prod(m.out_shape) for m in layers]
    outs = []
    for m, start, width in zip(layers, np.cumsum([0] + widths[:-1]), widths):
        out = y[..., start:start + width].reshape(y.shape[:-1] + m.out_shape)
        outs.append(out if m.bias is None else add_bias(out, m.bias[...].astype(dtype)))
    return outs


class Embedding(nnx.Module):
    """Token table [V, D]; `attend` reuses it as a tied output head."""

    def __init__(self, rows: int, cfg: ModelConfig, axes: tuple[str, str], *, std: float, rngs: nnx.Rngs):
        self.compute_dtype = DTYPES[cfg.compute_dtype]
        self.rows_axis = axes[0]
        self.table = param(rngs, (rows, cfg.d_model), axes, DTYPES[cfg.param_dtype], std)

    def __call__(self, ids: jax.Array, place=None) -> jax.Array:
        """The rows of `ids`. `place` (Kernels.constrain) gives each device whole rows first: with
        the width split over `fsdp` and the ids over the batch, GSPMD otherwise turned the lookup
        into all-to-alls; gathered once in the compute dtype, the table is what FSDP gathers for
        every other matrix (and a tied head's logits need it whole anyway)."""
        table = self.table[...].astype(self.compute_dtype)
        if place is not None:
            table = place(table, (self.rows_axis, None))
        return jnp.take(table, ids, axis=0)

    def attend(self, x_BxTxD: jax.Array) -> jax.Array:
        # Contract with the table's rows as stored: an explicit `.T` made XLA:CPU copy the whole
        # transposed table on every decoding step (7.3 of 29 ms per gpt2 token).
        table = self.table[...].astype(self.compute_dtype)
        y = jax.lax.dot_general(x_BxTxD.reshape(-1, x_BxTxD.shape[-1]), table, (((1,), (1,)), ((), ())))
        return y.reshape(*x_BxTxD.shape[:-1], table.shape[0])


class Norm(nnx.Module):
    """LayerNorm or RMSNorm over the last axis, computed in float32 as the references do."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = DTYPES[cfg.param_dtype]
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        self.compute_dtype = DTYPES[cfg.compute_dtype]
        self.scale = param(rngs, (cfg.d_model,), ("embed",), dtype, None)
        # RMSNorm never has a bias (Llama); LayerNorm's is optional (nanoGPT's bias=False).
        with_bias = cfg.norm_bias and cfg.norm == "layernorm"
        self.bias = param(rngs, (cfg.d_model,), ("embed",), dtype, 0.0) if with_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        y = y * trailing(self.scale[...].astype(jnp.float32), y.ndim)
        if self.bias is not None:
            y = add_bias(y, self.bias[...].astype(jnp.float32))
        return y.astype(self.compute_dtype)


def gelu_erf(x: jax.Array) -> jax.Array:
    """The exact GELU as PyTorch writes it, x/2 · (1 + erf(x/√2)). jax.nn.gelu's erfc form costs
    XLA:CPU two fusions with an exponential each (1.4 ms of a 1.9 ms MLP forward in the
    Shakespeare model); erf is one polynomial."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's gelu_new
    "gelu": gelu_erf,  # erf form (NeoX/Pythia, nanoGPT's nn.GELU())
    "relu": jax.nn.relu,
    "swiglu": jax.nn.silu,  # applied to the gate branch (Shazeer 2020, eq. 6)
}


class MLP(nnx.Module):
    """Position-wise feed-forward: down(act(up(x))), or down(silu(gate(x)) * up(x)) for SwiGLU."""

    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.resolved_d_ff
        common = dict(bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)
        std, out_std = cfg.init_std / math.sqrt(cfg.width_mult), out_std / math.sqrt(cfg.width_mult)  # μP
        self.act = ACTIVATIONS[cfg.activation]
        self.up = Dense((d,), (f,), ("embed", "mlp"), std=std, **common)
        self.gate = Dense((d,), (f,), ("embed", "mlp"), std=std, **common) \
            if cfg.activation == "swiglu" else None
        self.down = Dense((f,), (d,), ("mlp", "embed"), std=out_std, **common)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h_BxTxF = self.up(x_BxTxD)
        if self.gate is None:
            h_BxTxF = self.act(h_BxTxF)
        else:
            h_BxTxF = self.act(self.gate(x_BxTxD)) * h_BxTxF
        return self.down(h_BxTxF)
