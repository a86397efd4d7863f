"""Peak FLOPs per device, the denominator of MFU."""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from gptjax import storage


def peak_flops_per_device(configured: float | None) -> float:
    """The configured peak, or one measured by a matmul benchmark and cached per device kind."""
    if configured is not None:
        return configured
    kind = jax.local_devices()[0].device_kind
    cache = storage.cache_root() / "peak_flops.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if kind not in known:
        known[kind] = _measure_matmul_flops()
        if jax.process_index() == 0:
            storage.write_text(cache, json.dumps(known, indent=1))
    return known[kind]


def _measure_matmul_flops(n: int = 1024, reps: int = 5) -> float:
    import jax.numpy as jnp

    device = jax.local_devices()[0]
    dtype = jnp.float32 if device.platform == "cpu" else jnp.bfloat16
    a = jnp.ones((n, n), dtype, device=device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))
