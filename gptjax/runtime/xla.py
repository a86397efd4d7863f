"""XLA settings: compiler options gptjax applies to its steps, and the GPU flag profile peers use.

Compiler options travel with each compiled program (`xla.jit`, which every model program goes
through), so they need nothing set before jax starts. XLA_FLAGS, by contrast, are read once
when the backend starts: the GPU profile is applied by `gptjax train|finetune|bench --xla-profile gpu`
(or by GPTJAX_XLA_PROFILE=gpu in the job's environment) before jax starts.
"""

from __future__ import annotations

import os

import jax

# XLA:CPU hands dots and, by default in jax 0.10.2, reductions to YNNPACK. Its reductions are slow
# on the shapes of a small model: the softmax gradient's row sums took 1.7 ms each (7 ms of an
# 85 ms Shakespeare step); keeping YNNPACK for dots only made that step 5% faster, and the gpt2
# decode loop 2x faster at batch 8 (measured interleaved in one process; docs/benchmarks.md).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

# What MaxText, Paxml and JAX's GPU performance guide set for transformer training on NVIDIA GPUs:
# the latency-hiding scheduler overlaps collectives with compute; pipelined and combined
# collectives (FSDP's all-gathers and reduce-scatters) hide communication behind the layers that
# do not need it; double-buffered while loops let the scanned layer stack prefetch the next layer's
# weights. None changes numerics. Every flag is checked to parse in the pinned jaxlib (a test
# starts jax with them).
GPU_PROFILE = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
)
PROFILES = {"none": (), "gpu": GPU_PROFILE}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """Options for a program compiled for `platform` (default: this process's devices). None where
    XLA's defaults are best."""
    platform = platform or jax.devices()[0].platform
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else None


def jit(fun, *, mesh=None, **jit_kwargs):
    """`jax.jit` for a computation of the model, with the compiler options of the devices it runs
    on: the mesh's (a plan for a TPU topology compiles for TPUs from a CPU process), else this
    process's. Every model program goes through here, so none is compiled with XLA:CPU's slow
    defaults. Call it when the program is needed, not at import: asking for the devices starts
    jax's backend, after which XLA_FLAGS are fixed."""
    from gptjax.runtime import sharding

    platform = sharding.platform(mesh) if mesh is not None else None
    return jax.jit(fun, compiler_options=compiler_options(platform), **jit_kwargs)


def apply_profile(name: str, environ=os.environ) -> None:
    """Add a flag profile to XLA_FLAGS; must run before jax starts its backend. Flags the user set
    already win: a profile flag whose name is in XLA_FLAGS is left out."""
    if name not in PROFILES:
        from gptjax.config import ConfigError

        raise ConfigError(f"--xla-profile (or GPTJAX_XLA_PROFILE) = {name!r} is not one of {', '.join(PROFILES)}")
    current = environ.get("XLA_FLAGS", "")
    given = {flag.split("=", 1)[0] for flag in current.split()}
    extra = [flag for flag in PROFILES[name] if flag.split("=", 1)[0] not in given]
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
