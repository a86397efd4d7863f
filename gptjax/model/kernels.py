"""How the model's arithmetic runs on the devices at hand: chosen once, outside, and passed in.

The model never asks which device or mesh it is traced for (STYLE.md 16). `for_device` makes a
`Kernels` value from the config and a device (the caller's: a TPU topology's, in a plan made on a
CPU machine); it travels as a static attribute of GPT, inside the graph definition that every
step merges, so a traced step's behaviour follows from its arguments alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import jax

from gptjax.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

# Logical activation axes the model names (the residual stream's [B, T, D]); runtime.sharding
# maps them onto mesh axes.
ACTIVATION_AXES = ("batch", "length", "act_embed")


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which attention path runs, and why (said when a requested or preferred path is not taken)."""

    impl: str  # "einsum", "xla", "cudnn" or "pallas"
    reason: str


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The attention path for plain causal calls, whether q/k/v run as one matmul, how
    activations named by logical axes are placed (None: left to the compiler), and the Pallas
    attention kernel for the mesh (runtime.splash.SplashAttention), which the "pallas" path calls."""

    attention: Choice = Choice("einsum", "the reference path")
    fuse_qkv: bool = False  # one matmul for q, k and v (layers.dense_group)
    place: Callable[[jax.Array, tuple[str | None, ...]], jax.Array] | None = None  # hashable: a static value
    pallas: Callable | None = None  # hashable: a static value

    def attention_for(self, *, plain_causal: bool, dropout: bool) -> Choice:
        """The path of one call. Attention dropout runs on the einsum path only; a mask that is not
        plain causal (a KV cache, packed segments, given positions) cannot be the flash kernel's
        causal flag, so cuDNN gives way to XLA's fused attention there."""
        if dropout:  # dot_product_attention has no dropout on attention probabilities
            return Choice("einsum", "attention dropout runs on the einsum path only")
        if self.attention.impl in ("cudnn", "pallas") and not plain_causal:
            return Choice("xla", "XLA's fused attention, because this call's mask is not plain causal "
                                 "(a KV cache, packed segments or given positions)")
        if self.attention.impl == "pallas" and self.pallas is None:
            return Choice("xla", "XLA's fused attention, because no Pallas kernel was built for this model's mesh")
        return self.attention

    def constrain(self, x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        return x if self.place is None else self.place(x, axes)


REFERENCE = Kernels()


def is_nvidia(platform: str, device_kind: str) -> bool:
    return platform == "gpu" and "nvidia" in device_kind.lower()


def cudnn_obstacles(cfg: ModelConfig, *, platform: str, device_kind: str) -> list[str]:
    """Why cuDNN flash attention cannot run this model on this device (empty: it can), from what
    jax's cuDNN path accepts: an NVIDIA GPU, bfloat16 inputs, a head width that is a multiple of
    8 up to 128."""
    reasons = []
    if not is_nvidia(platform, device_kind):
        reasons.append(f"cuDNN runs on NVIDIA GPUs only (this device: {platform} {device_kind!r})")
    if cfg.compute_dtype != "bfloat16":  # cuDNN's kernel takes half precision only
        reasons.append(f"cuDNN flash attention needs compute_dtype bfloat16, not {cfg.compute_dtype}")
    h = cfg.resolved_head_dim
    if h % 8 or h > 128:
        reasons.append(f"cuDNN flash attention needs a head width that is a multiple of 8 up to 128, not {h}")
    return reasons


def pallas_obstacles(cfg: ModelConfig, *, platform: str) -> list[str]:
    """Why jax's splash attention kernel cannot run this model here (empty: it can). Banded layers
    run with the kernel's own local mask; GQA and MQA with its grouped heads."""
    reasons = []
    if platform != "tpu":
        reasons.append(f"the Pallas attention kernel runs on TPUs only (this device: {platform})")
    if cfg.position == "alibi":
        reasons.append("ALiBi adds a bias to the attention logits, which the splash kernel does not take")
    return reasons


def mask_obstacles(cfg: ModelConfig) -> list[str]:
    """Why this model's mask is not the plain causal one the flash kernel's causal flag expresses."""
    reasons = []
    if "local" in cfg.layer_kinds:
        reasons.append("banded (local) layers share one compiled layer body with traced window sizes, and cuDNN's "
                       "sliding window needs a static one")
    if cfg.position == "alibi":
        reasons.append("ALiBi adds a dense [B, N, T, S] bias, which the flash kernel would have to read whole")
    return reasons


def choose_attention(cfg: ModelConfig, *, platform: str, device_kind: str) -> Choice:
    """The attention path for `cfg.attention_impl` on this device. `auto`: einsum on CPU (measured
    1.6x faster than XLA's fused attention for a whole train step of the Shakespeare config),
    jax's Pallas splash kernel on TPUs and cuDNN flash attention on NVIDIA GPUs when the model
    allows them, XLA's fused attention otherwise. An explicit `cudnn` or `pallas` that this model
    or device cannot run is refused with the reasons."""
    impl = cfg.attention_impl
    if impl in ("einsum", "xla"):
        return Choice(impl, f"attention_impl = {impl}")
    if impl == "auto" and platform == "cpu":
        return Choice("einsum", "auto on CPU: the einsum path is the faster one there")
    if impl == "pallas" or (impl == "auto" and platform == "tpu"):
        reasons = pallas_obstacles(cfg, platform=platform)
        if not reasons:
            return Choice("pallas", f"{impl}: jax's Pallas splash attention kernel")
        if impl == "pallas":
            raise ConfigError(f"attention_impl = 'pallas' cannot run here: {'; '.join(reasons)}. Use 'auto' (the "
                              "Pallas kernel where it can run, XLA's fused attention elsewhere) or 'xla'.")
        return Choice("xla", f"{impl}: XLA's fused attention, because " + "; ".join(reasons))
    hard = cudnn_obstacles(cfg, platform=platform, device_kind=device_kind)
    if impl == "cudnn" and hard:
        raise ConfigError(f"attention_impl = 'cudnn' cannot run here: {'; '.join(hard)}. Use 'auto' (cuDNN where "
                          "it can run, XLA's fused attention elsewhere) or 'xla'.")
    obstacles = hard + mask_obstacles(cfg)
    if not obstacles:
        return Choice("cudnn", f"{impl}: cuDNN flash attention")
    return Choice("xla", f"{impl}: XLA's fused attention, because " + "; ".join(obstacles))


def for_device(cfg: ModelConfig, device: jax.Device, *, place=None, pallas=None, fuse_qkv: bool = True,
               heads_split: bool = False) -> Kernels:
    """The kernels for `cfg` on `device`'s platform. q/k/v run as one matmul (layers.dense_group)
    unless the caller wraps the projections one by one (`fuse_qkv=False`) or the heads are split
    over a tensor axis (`heads_split`: the concatenated outputs would interleave the shards, so the
    products stay apart and each keeps its split). `pallas`: the caller's Pallas attention kernel for its
    mesh (runtime.splash). A fallback on an NVIDIA GPU or a TPU is worth a warning."""
    choice = choose_attention(cfg, platform=device.platform, device_kind=device.device_kind)
    accelerated = is_nvidia(device.platform, device.device_kind) or device.platform == "tpu"
    if choice.impl not in ("cudnn", "pallas") and accelerated:
        log.warning("attention: %s", choice.reason)
    return Kernels(choice, fuse_qkv=fuse_qkv and not heads_split, place=place, pallas=pallas)
