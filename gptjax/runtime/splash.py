"""Splash attention, jax's Pallas TPU flash-attention kernel, run per device under shard_map.

It lives here and not in model/ because it needs the mesh: q, k and v arrive in their batch
(data, fsdp) and head (tensor) shardings and each device attends over its own rows and heads, so
no collective gathers them. The model holds a `SplashAttention` in its Kernels and calls it
where `model.kernels` chose the "pallas" path (plain causal masks, dense or banded layers).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from gptjax.runtime.sharding import BATCH

# The kernel tiles the sequence in blocks of this many positions (the TPU's lane width); a length
# that is not a multiple is padded (see SplashAttention.__call__).
ALIGN = 128
# Larger tiles where the length allows (MaxText's default blocks are 512).
BLOCKS = (512, 256, 128)


@dataclasses.dataclass(frozen=True)
class SplashAttention:
    """Causal attention of q [B, T, N, H] over k, v [B, T, K, H] (K divides N: MHA, GQA, MQA), by
    layer window: `window` (traced, as scanned layers of several kinds share one body) is one of
    the static `windows`, and each has its own kernel mask (GPT-Neo's band or dense causal).

    mesh: the devices q/k/v are sharded over (None: one device, no shard_map).
    interpret: run the kernel in Pallas's interpreter, on any backend (tests on CPU).
    """

    mesh: Mesh | None = None
    interpret: bool = False

    def __call__(self, q, k, v, *, window, windows: tuple[int, ...], scale: float):
        b, t, n, h = q.shape
        # The kernel has no scale argument: folded into q, in float32 before the cast back.
        q = (q.astype(jnp.float32) * scale).astype(q.dtype)
        # Padded keys lie after every real query, so the causal mask hides them; padded queries'
        # rows are cut off below.
        pad = -t % ALIGN
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (q, k, v))
        index = jnp.argmax(jnp.asarray(windows) == window) if len(windows) > 1 else jnp.zeros((), jnp.int32)
        attend = functools.partial(_attend, windows=windows, interpret=self.interpret)
        if self.mesh is not None and self.mesh.size > 1:
            spec = self._spec(b, n, k.shape[1])
            attend = jax.shard_map(attend, mesh=self.mesh, in_specs=(spec, spec, spec, PartitionSpec()),
                                   out_specs=spec, check_vma=False)
        out = attend(q, k, v, index)  # [B, N, T + pad, H]
        return out.transpose(0, 2, 1, 3)[:, :t]

    def _spec(self, batch: int, heads: int, kv_heads: int) -> PartitionSpec:
        """The [B, N, T, H] spec of q, k, v and the output: rows over the batch axes and heads over
        `tensor`, each where the mesh divides them (as runtime.sharding places activations). Query
        heads stay whole on each device when the key heads cannot be split alongside them (GQA
        groups must stay together)."""
        shape = self.mesh.shape
        rows = BATCH if batch % math.prod(shape[a] for a in BATCH) == 0 else None
        split = shape["tensor"] > 1 and heads % shape["tensor"] == 0 and kv_heads % shape["tensor"] == 0
        return PartitionSpec(rows, "tensor" if split else None, None, None)

def _attend(q, k, v, index, *, windows, interpret):
    """One device's rows and heads: one kernel per window, the layer's chosen by `index`."""
    _, n, t, _ = q.shape
    kernels = [_kernel(n, t, w, interpret) for w in windows]
    branches = [lambda q, k, v, kernel=kernel: jax.vmap(kernel)(q, k, v) for kernel in kernels]
    if len(branches) == 1:
        return branches[0](q, k, v)
    return jax.lax.switch(index, branches, q, k, v)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, length: int, window: int, interpret: bool):
    """The splash kernel for `heads` query heads over `length` positions: causal, and banded to
    keys i - window < j <= i when `window` is shorter than the sequence (GPT-Neo's local layers)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    shape = (length, length)
    one = masks.CausalMask(shape) if window >= length else masks.LocalMask(shape, (window - 1, 0), offset=0)
    block = next(b for b in BLOCKS if length % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, use_fused_bwd_kernel=True)
    with jax.ensure_compile_time_eval():  # the mask tables are constants, not part of any trace
        return splash.make_splash_mha(masks.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                                      q_seq_shards=1, interpret=interpret)
