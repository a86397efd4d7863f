"""Memory plans: the sharded train step compiled ahead of time, per-device memory before submitting.

The step is the one training runs (train.make_train_step), lowered against abstract inputs that
carry the target shardings and compiled for the mesh's devices, so nothing is allocated. Which
devices: fake CPU devices of the requested count (the CLI sets them up before jax starts). The
parameter, optimizer-state and batch figures are exact (shard shapes times item sizes, the same
for any backend); the temporaries are the CPU compiler's buffer assignment, which fuses and
schedules differently from the GPU and TPU compilers, so for accelerators they are an estimate.
Supervised fine-tuning rows (tokens with weights, segments and positions) are planned as plain
token rows of the same shape; the three small int/float arrays beside them are left out.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import counting, hardware, sharding, train
from gptjax.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: dict[str, int]
    devices: int
    platform: str
    batch_size: int
    seq_len: int
    params: int  # exact parameter count
    params_bytes: int  # per device, from the shardings (for LoRA: the trained adapters)
    frozen_bytes: int  # per device: LoRA's frozen base (0 otherwise)
    opt_state_bytes: int  # per device
    batch_bytes: int  # per device
    argument_bytes: int  # the compiled step's, per device: state + frozen + batch + stop flags
    output_bytes: int
    alias_bytes: int  # outputs written over donated inputs (the state)
    temp_bytes: int  # activations and temporaries
    peak_bytes: int  # arguments + outputs - aliased + temporaries
    compile_s: float
    accelerator: str | None = None
    capacity_bytes: float | None = None

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.peak_bytes <= self.capacity_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fits": self.fits}


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(tree))


def make_plan(cfg: TrainConfig, accelerator: str | None = None) -> Plan:
    """Compile the train step of `cfg` on its mesh over the available devices; report memory."""
    capacity = hardware.device_memory(accelerator) if accelerator else None  # bad names fail first
    mesh = sharding.make_mesh(cfg.mesh)
    tr = train.make_trainer(cfg, mesh)
    seq = cfg.resolved_seq_len
    batch = jax.ShapeDtypeStruct((cfg.data.batch_size, seq + 1), jnp.int32, sharding=tr.batch_sharding)
    stop = jax.ShapeDtypeStruct((mesh.size,), jnp.float32, sharding=sharding.per_device(mesh))
    t0 = time.perf_counter()
    compiled = train.make_train_step(tr).lower(tr.abstract_state, tr.abstract_frozen, batch, stop).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    argument, output = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    return Plan(
        mesh=dict(zip(mesh.axis_names, mesh.devices.shape)), devices=mesh.size, platform=jax.devices()[0].platform,
        batch_size=cfg.data.batch_size, seq_len=seq, params=counting.param_counts(cfg.model, seq).total,
        params_bytes=per_device_bytes(tr.abstract_state["params"]),
        frozen_bytes=per_device_bytes(tr.abstract_frozen) if tr.abstract_frozen is not None else 0,
        opt_state_bytes=per_device_bytes(tr.abstract_state["opt_state"]), batch_bytes=per_device_bytes(batch),
        argument_bytes=argument, output_bytes=output, alias_bytes=alias, temp_bytes=temp,
        peak_bytes=argument + output - alias + temp, compile_s=compile_s,
        accelerator=capacity[0] if capacity else None, capacity_bytes=capacity[1] if capacity else None)


def format_plan(plan: Plan) -> str:
    gib = 2**30
    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh.items())
    rows = [("parameters", plan.params_bytes), ("frozen base (LoRA)", plan.frozen_bytes),
            ("optimizer state", plan.opt_state_bytes), ("batch", plan.batch_bytes),
            ("activations and temporaries", plan.temp_bytes), ("peak (arguments + outputs - donated + temps)",
                                                                plan.peak_bytes)]
    lines = [f"train step of {plan.params:,} parameters, batch {plan.batch_size} x {plan.seq_len} tokens, "
             f"mesh {mesh} ({plan.devices} {plan.platform} devices), compiled in {plan.compile_s:.1f} s",
             "per device:"]
    lines += [f"  {name:<46} {value / gib:10.3f} GiB" for name, value in rows if value or name == "parameters"]
    if plan.accelerator is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        note = ("; JAX preallocates 75% of a GPU unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise"
                if plan.accelerator.startswith("NVIDIA") else "")
        lines.append(f"{verdict} on {plan.accelerator} ({plan.peak_bytes / plan.capacity_bytes:.0%} of "
                     f"{plan.capacity_bytes / gib:.1f} GiB{note})")
    if plan.platform == "cpu":
        lines.append("parameters, optimizer state and batch are exact; temporaries are the CPU compiler's buffer "
                     "assignment (an estimate for GPUs and TPUs)")
    return "\n".join(lines)
