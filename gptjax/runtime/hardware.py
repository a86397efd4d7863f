"""Accelerators' published figures: peak FLOPs per device (the denominator of MFU) and memory
per device (what `gptjax plan --accelerator` checks against), in one table.

Known accelerators use their published dense peak for the compute dtype (no sparsity); a small
matmul measures a CPU or an unknown device instead, which understates the peak (a single
1024-wide matmul reaches well below it on accelerators), so MFU against a measured figure is an
upper bound. `PeakFlops.source` says which, and run.json records it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np

from gptjax.config import ConfigError
from gptjax.store import paths


@dataclasses.dataclass(frozen=True)
class Accelerator:
    kinds: tuple[str, ...]  # substrings of the lower-cased jax device_kind that name it
    name: str
    bf16: float  # dense peak FLOP/s
    fp32: float
    key: str | None = None  # its name for `gptjax plan --accelerator`, where it has a memory figure
    memory: str = ""  # as the vendor states it
    memory_bytes: float = 0.0


GB, GIB = 1e9, 2**30
# Most specific kind first. Peaks: NVIDIA datasheets' dense tensor-core bf16 and non-tensor fp32
# (the sparse figures halved); Cloud TPU system-architecture pages, bf16 per chip (TPUs run fp32
# matmuls as bf16 passes and publish no fp32 peak, so their bf16 figure serves both). Memory:
# datasheet capacities (NVIDIA in GB as sold, TPU HBM per chip in GiB as Cloud TPU states it); not
# all of it is usable: JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION (0.75 by default on GPUs)
# and the runtime keeps some, so a plan near the limit is a warning, not a fit.
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator(("h100 pcie",), "NVIDIA H100 PCIe", 756e12, 51e12),
    Accelerator(("h100",), "NVIDIA H100 SXM", 989e12, 67e12, "h100", "80 GB", 80 * GB),
    Accelerator(("gh200",), "NVIDIA GH200", 989e12, 67e12),
    Accelerator(("h200",), "NVIDIA H200", 989e12, 67e12, "h200", "141 GB", 141 * GB),
    Accelerator(("b200",), "NVIDIA B200", 2250e12, 75e12, "b200", "180 GB", 180 * GB),
    Accelerator(("a100",), "NVIDIA A100", 312e12, 19.5e12, "a100-40gb", "40 GB", 40 * GB),
    Accelerator(("a100",), "NVIDIA A100", 312e12, 19.5e12, "a100-80gb", "80 GB", 80 * GB),
    Accelerator(("a10g",), "NVIDIA A10G", 70e12, 31.2e12, "a10g", "24 GB", 24 * GB),
    Accelerator(("l40s",), "NVIDIA L40S", 362e12, 91.6e12, "l40s", "48 GB", 48 * GB),
    Accelerator(("l4",), "NVIDIA L4", 121e12, 30.3e12, "l4", "24 GB", 24 * GB),
    Accelerator(("v100",), "NVIDIA V100", 125e12, 15.7e12, "v100-32gb", "32 GB", 32 * GB),
    Accelerator(("v6 lite", "v6e"), "TPU v6e", 918e12, 918e12, "tpu-v6e", "32 GiB", 32 * GIB),
    Accelerator(("v5 lite", "v5e"), "TPU v5e", 197e12, 197e12, "tpu-v5e", "16 GiB", 16 * GIB),
    Accelerator(("v5p", "tpu v5"), "TPU v5p", 459e12, 459e12, "tpu-v5p", "95 GiB", 95 * GIB),
    Accelerator(("tpu v4",), "TPU v4", 275e12, 275e12, "tpu-v4", "32 GiB", 32 * GIB),
    Accelerator(("tpu v3",), "TPU v3", 123e12, 123e12),
    Accelerator(("tpu v2",), "TPU v2", 45e12, 45e12),
)


@dataclasses.dataclass(frozen=True)
class PeakFlops:
    per_device: float
    source: str  # "configured", "published: <name> <dtype>", or "measured: ..."

    def to_dict(self) -> dict:
        return {"per_device": self.per_device, "source": self.source}


def published(device_kind: str, dtype: str) -> tuple[str, float] | None:
    """(name, peak) of a known accelerator for `dtype` ("bfloat16" or "float32"), else None."""
    kind = device_kind.lower()
    for acc in ACCELERATORS:
        if any(k in kind for k in acc.kinds):
            return acc.name, acc.bf16 if dtype == "bfloat16" else acc.fp32
    return None


def peak_flops(configured: float | None, compute_dtype: str = "float32") -> PeakFlops:
    """The configured peak; else the published one of a known accelerator; else one measured by a
    matmul benchmark and cached per device kind."""
    if configured is not None:
        return PeakFlops(configured, "configured")
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        known = published(device.device_kind, compute_dtype)
        if known is not None:
            return PeakFlops(known[1], f"published: {known[0]} {compute_dtype} dense")
    kind = device.device_kind
    cache = paths.cache_root() / "peak_flops.json"
    measured = json.loads(cache.read_text()) if cache.is_file() else {}
    if kind not in measured:
        measured[kind] = _measure_matmul_flops()
        if jax.process_index() == 0:
            paths.write_text(cache, json.dumps(measured, indent=1))
    return PeakFlops(measured[kind], f"measured: median of 5 jitted 1024x1024 matmuls on {kind}")


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


def device_memory(accelerator: str) -> tuple[str, float]:
    """(name, bytes) of a named accelerator; unknown names list the known ones."""
    by_key = {acc.key: acc for acc in ACCELERATORS if acc.key}
    acc = by_key.get(accelerator.lower())
    if acc is None:
        raise ConfigError(f"--accelerator {accelerator!r} is not one of {', '.join(by_key)}")
    return f"{acc.name} {acc.memory}", acc.memory_bytes


def device_capacity(device: jax.Device) -> int | None:
    """Bytes of memory one device of this process may use: the runtime's limit on accelerators;
    on CPU the host's physical memory shared by its local CPU devices; None where unknown."""
    if device.platform == "cpu":
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
        return total // max(1, sum(d.platform == "cpu" for d in jax.local_devices()))
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None

