"""LoRA (Hu et al. 2021) as a function of parameters: adapters A [L, *in, r] and B [L, r, *out] for
each targeted block kernel [L, *in, *out], merged as W + (alpha / r) · A·B inside the step.

The trainable state is the adapters alone: the optimizer holds no moments for the frozen base,
checkpoints hold only adapters (with the base's fingerprint), and each adapter carries its
kernel's logical axes (plus "lora", replicated), so it is sharded like the layer it adapts.
Merging costs one small matmul per kernel per step and keeps the model code free of adapters;
it is exact in float32, so an exported merged model is the model that was trained. With adapter
dropout (finetune.lora.dropout > 0) training steps instead attach each adapter beside its layer
(attach: scale · dropout(x)·A·B added to x·W, as PEFT computes it); evaluation, sampling and
export merge.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from gptjax.config import ConfigError, LoraConfig
from gptjax.model.layers import Dense, dropout, matmul_2d

# Target name -> (path of its kernel in the parameters, number of input dims of that kernel).
TARGETS = {
    "attn.q": (("blocks", "attn", "q", "kernel"), 1),
    "attn.k": (("blocks", "attn", "k", "kernel"), 1),
    "attn.v": (("blocks", "attn", "v", "kernel"), 1),
    "attn.o": (("blocks", "attn", "o", "kernel"), 2),
    "mlp.up": (("blocks", "mlp", "up", "kernel"), 1),
    "mlp.gate": (("blocks", "mlp", "gate", "kernel"), 1),
    "mlp.down": (("blocks", "mlp", "down", "kernel"), 1),
}


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(tree, dict) or tree.get(key) is None:
            return None
        tree = tree[key]
    return tree


def adapter_layout(cfg: LoraConfig, shapes: dict, axes: dict) -> tuple[dict, dict]:
    """(ShapeDtypeStructs, logical PartitionSpecs) of the adapters, as {"attn": {"q": {"a", "b"}}}."""
    out_shapes: dict = {}
    out_axes: dict = {}
    for target in cfg.targets:
        path, n_in = TARGETS[target]
        kernel = _get(shapes, path)
        if kernel is None:
            raise ConfigError(f"finetune.lora.targets: {target!r} is not a layer of this model (no {'.'.join(path)}; "
                              "mlp.gate exists only with activation 'swiglu')")
        logical = tuple(_get(axes, path))
        layers, ins, outs = kernel.shape[:1], kernel.shape[1:1 + n_in], kernel.shape[1 + n_in:]
        a_shape, b_shape = layers + ins + (cfg.rank,), layers + (cfg.rank,) + outs
        group, name = target.split(".")
        out_shapes.setdefault(group, {})[name] = {
            "a": jax.ShapeDtypeStruct(a_shape, kernel.dtype), "b": jax.ShapeDtypeStruct(b_shape, kernel.dtype)}
        out_axes.setdefault(group, {})[name] = {
            "a": PartitionSpec(*logical[:1 + n_in], "lora"),
            "b": PartitionSpec(logical[0], "lora", *logical[1 + n_in:])}
    return out_shapes, out_axes


def init_adapters(cfg: LoraConfig, shapes: dict, seed: int) -> dict:
    """A uniform in ±1/sqrt(fan_in) (PEFT's Kaiming-uniform bound), B zero: the merged model starts
    as the base model exactly."""
    key = jax.random.key(seed)
    out: dict = {}
    for i, target in enumerate(cfg.targets):
        group, name = target.split(".")
        a, b = shapes[group][name]["a"], shapes[group][name]["b"]
        fan_in = math.prod(a.shape[1:-1])
        bound = 1.0 / math.sqrt(fan_in)
        out.setdefault(group, {})[name] = {
            "a": jax.random.uniform(jax.random.fold_in(key, i), a.shape, a.dtype, -bound, bound),
            "b": jnp.zeros(b.shape, b.dtype)}
    return out


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale · A·B with the kernel's shape [L, *in, *out]."""
    layers, ins, rank, outs = a.shape[0], a.shape[1:-1], a.shape[-1], b.shape[2:]
    a2 = a.reshape(layers, math.prod(ins), rank)
    b2 = b.reshape(layers, rank, math.prod(outs))
    return (scale * jnp.einsum("lir,lro->lio", a2, b2)).reshape((layers, *ins, *outs))


def merge(base: dict, adapters: dict, cfg: LoraConfig) -> dict:
    """The base parameters with each targeted kernel replaced by W + scale · A·B."""
    merged = jax.tree.map(lambda x: x, base)  # a new tree: the caller's base is left as it is
    for target in cfg.targets:
        path, _ = TARGETS[target]
        group, name = target.split(".")
        ad = adapters[group][name]
        node = merged
        for key in path[:-1]:
            node = node[key]
        kernel = node[path[-1]]
        node[path[-1]] = kernel + delta(ad["a"], ad["b"], cfg.scale).astype(kernel.dtype)
    return merged


def attach(model, adapters: dict, cfg: LoraConfig, key: jax.Array) -> None:
    """Give each targeted Dense layer of `model` (the frozen base) its adapter as a separate path
    with dropout on its input, for a training step with finetune.lora.dropout > 0; `key` is the
    step's dropout key. Without dropout, `merge` computes the same function."""
    # Wrapped projections run one by one: q/k/v fused into one matmul would skip the adapters.
    model.kernels = dataclasses.replace(model.kernels, fuse_qkv=False)
    for i, target in enumerate(cfg.targets):
        path, _ = TARGETS[target]
        group, name = target.split(".")
        ad = adapters[group][name]
        parent = model
        for attr in path[:-2]:
            parent = getattr(parent, attr)
        layers = ad["a"].shape[0]  # stacked like the blocks: each layer gets its own key
        keys = jax.random.split(jax.random.fold_in(key, 7919 + i), layers)
        setattr(parent, path[-2], LoraDense(getattr(parent, path[-2]), ad["a"], ad["b"], keys, cfg.scale,
                                            cfg.dropout))


class Adapter(nnx.Variable):
    """A LoRA adapter's arrays, attached to a model for one training step (attach). Not an
    nnx.Param: checkpoints, exports and parameter shardings never see it."""


class LoraDense(nnx.Module):
    """A frozen Dense layer with its adapter beside it: x·W + b + scale · dropout(x)·A·B."""

    def __init__(self, base: Dense, a, b, key, scale: float, rate: float):
        self.base = base
        self.a, self.b, self.key = Adapter(a), Adapter(b), Adapter(key)
        self.scale, self.rate = scale, rate

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        x = x.astype(self.base.compute_dtype)
        a, b = self.a[...].astype(x.dtype), self.b[...].astype(x.dtype)
        h = matmul_2d(dropout(x, self.rate, self.key[...]), a, len(self.base.in_shape))
        return y + (self.scale * matmul_2d(h, b, 1)).astype(y.dtype)


def counts(adapters_or_shapes: dict, base_shapes: dict) -> tuple[int, int]:
    """(trainable adapter parameters, frozen base parameters)."""
    size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    return size(adapters_or_shapes), size(base_shapes)
