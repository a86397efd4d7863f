"""Memory plans: the sharded train step compiled ahead of time, per-device memory before submitting.

The step is the one training runs (trainer.make_train_step), lowered against abstract inputs that
carry the target shardings and compiled for the mesh's devices, so nothing is allocated. Which
devices: those of a TPU topology (`tpu_devices("v5e:2x4")`, through libtpu, which compiles for
TPUs on any machine: the plan is then the real TPU compiler's), or fake CPU devices of the
requested count (the CLI sets them up before jax starts). The parameter, optimizer-state and batch
figures are exact (shard shapes times item sizes, the same for any backend); on CPU devices the
temporaries are the CPU compiler's buffer assignment, which fuses and schedules differently from
the GPU and TPU compilers, so for GPUs they are an estimate (no GPU compiler runs without a GPU).
Supervised fine-tuning rows (tokens with weights, segments and positions) are planned as plain
token rows of the same shape; the three small int/float arrays beside them are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from gptjax.config import ConfigError, TrainConfig
from gptjax.model import counting
from gptjax.runtime import hardware, sharding
from gptjax.training import trainer


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
    # The compiler's own peak where it reports one (None where it says 0): buffers live at the same
    # moment plus what it reserves. The sum above can overstate it (GPT-3 XL on v5e, libtpu 0.0.42:
    # 3.89 vs 3.41 GiB) or, for a tiny model, understate it.
    compiler_peak_bytes: int | None = None
    attention: dict[str, str] = dataclasses.field(default_factory=dict)  # the step's path: impl, reason
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)  # op -> static count in the program
    device_kind: str = ""
    topology: str | None = None  # the TPU topology compiled for, if any
    slices: int = 1  # mesh.dcn_data: slices joined over the data-centre network (`mesh` spans them all)
    accelerator: str | None = None
    capacity_bytes: float | None = None

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.peak_bytes <= self.capacity_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fits": self.fits}


@contextlib.contextmanager
def _quiet_native_stderr():
    """Native code's writes to file descriptor 2 go to a discarded temporary file meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tpu_devices(topology: str, slices: int = 1) -> list:
    """The devices of a TPU slice such as 'v5e:2x4' or 'v5p:2x2x1' (or of `slices` of them, joined
    over the data-centre network), to compile for without one."""
    from jax.experimental import topologies

    # Compiling touches no chip: let several processes (a test run, parallel plans) load libtpu,
    # whose lockfile otherwise admits one per machine.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_native_stderr():  # libtpu's start-up looks for a TPU VM's metadata and logs that it found none
            extra = {"num_slices": slices} if slices > 1 else {}
            return list(topologies.get_topology_desc(topology, "tpu", **extra).devices)
    except RuntimeError as e:
        if "not installed" in str(e):
            raise ConfigError(f"--topology {topology}: compiling for TPUs needs libtpu (pip install "
                              f"'jax[tpu]=={jax.__version__}' installs the matching one, or set TPU_LIBRARY_PATH "
                              "to its libtpu.so; it runs on a CPU machine)") from e
        raise ConfigError(f"--topology {topology!r}: {e} (expected a TPU slice such as v5e:2x4, v5p:2x2x1, "
                          "v6e:2x2, v4:2x2x1)") from e


def abstract_inputs(tr: trainer.Trainer) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The train step's batch rows and per-device stop flags, as shapes with their shardings."""
    batch = jax.ShapeDtypeStruct((tr.cfg.data.batch_size, tr.cfg.resolved_seq_len + 1), jnp.int32,
                                 sharding=tr.batch_sharding)
    return batch, jax.ShapeDtypeStruct((tr.mesh.size,), jnp.float32, sharding=sharding.per_device(tr.mesh))


def compile_step(tr: trainer.Trainer):
    """The train step compiled from abstract inputs with the trainer's shardings (nothing is
    allocated), and the seconds it took. The persistent cache is off: a hit is not a compile, and
    a TPU topology's program has no client to load it into."""
    batch, stop = abstract_inputs(tr)
    from jax.experimental.compilation_cache import compilation_cache

    # jax decides once per process whether the cache is used: the flag alone would be ignored
    # after the first compile, so the decision is reset on the way in and out.
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        t0 = time.perf_counter()
        compiled = trainer.make_train_step(tr).lower(tr.abstract_state, tr.abstract_frozen, batch, stop).compile()
        return compiled, time.perf_counter() - t0
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
        compilation_cache.reset_cache()


def make_plan(cfg: TrainConfig, accelerator: str | None = None, devices=None, topology: str | None = None) -> Plan:
    """Compile the train step of `cfg` on its mesh over `devices` (default: the available ones;
    a TPU topology's from `tpu_devices`); report memory."""
    capacity = hardware.device_memory(accelerator) if accelerator else None  # bad names fail first
    mesh = sharding.make_mesh(cfg.mesh, devices)
    tr = trainer.make_trainer(cfg, mesh)
    seq = cfg.resolved_seq_len
    batch, _ = abstract_inputs(tr)
    compiled, compile_s = compile_step(tr)
    attention = tr.kernels.attention_for(plain_causal=not cfg.data.sft_files, dropout=cfg.model.attn_dropout > 0)
    return Plan(
        mesh=dict(zip(mesh.axis_names, mesh.devices.shape)), devices=mesh.size, platform=sharding.platform(mesh),
        device_kind=mesh.devices.flat[0].device_kind, topology=topology, slices=cfg.mesh.dcn_data,
        batch_size=cfg.data.batch_size, seq_len=seq, params=counting.param_counts(cfg.model, seq).total,
        params_bytes=sharding.per_device_bytes(tr.abstract_state["params"]),
        frozen_bytes=sharding.per_device_bytes(tr.abstract_frozen) if tr.abstract_frozen is not None else 0,
        opt_state_bytes=sharding.per_device_bytes(tr.abstract_state["opt_state"]),
        batch_bytes=sharding.per_device_bytes(batch),
        **memory_figures(compiled), compile_s=compile_s,
        attention={"impl": attention.impl, "reason": attention.reason}, collectives=collective_counts(compiled),
        accelerator=capacity[0] if capacity else None, capacity_bytes=capacity[1] if capacity else None)


def memory_figures(compiled) -> dict:
    """A compiled program's memory per device: its buffers, the peak as their sum (arguments +
    outputs - donated + temporaries) and the compiler's own peak where it reports one."""
    mem = compiled.memory_analysis()
    argument, output = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    return {"argument_bytes": argument, "output_bytes": output, "alias_bytes": alias, "temp_bytes": temp,
            "peak_bytes": argument + output - alias + temp,
            "compiler_peak_bytes": int(getattr(mem, "peak_memory_in_bytes", 0)) or None}


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# An instruction's op name: `= <shape> all-gather(` or its asynchronous `all-gather-start(` (the
# matching -done is the same collective and is not counted).
_COLLECTIVE_OP = re.compile(r"=\s+\S.*?\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collective_counts(compiled) -> dict[str, int]:
    """Static collective ops per kind in the optimized program (a scanned body counted once)."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in compiled.as_text().splitlines():
        match = _COLLECTIVE_OP.search(line)
        if match:
            counts[match.group(1)] += 1
    return counts


def format_plan(plan: Plan) -> str:
    gib = 2**30
    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh.items())
    rows = [("parameters", plan.params_bytes), ("frozen base (LoRA)", plan.frozen_bytes),
            ("optimizer state", plan.opt_state_bytes), ("batch", plan.batch_bytes),
            ("activations and temporaries", plan.temp_bytes), ("peak (arguments + outputs - donated + temps)",
                                                                plan.peak_bytes)]
    lines = [f"train step of {plan.params:,} parameters, batch {plan.batch_size} x {plan.seq_len} tokens, "
             f"mesh {mesh} ({plan.devices} {plan.device_kind or plan.platform} devices"
             f"{f', topology {plan.topology}' if plan.topology else ''}"
             f"{f' x {plan.slices} slices' if plan.slices > 1 else ''}), compiled in {plan.compile_s:.1f} s",
             "per device:"]
    lines += [f"  {name:<46} {value / gib:10.3f} GiB" for name, value in rows if value or name == "parameters"]
    if plan.compiler_peak_bytes is not None:
        name = "peak (the compiler's own figure)"
        lines.append(f"  {name:<46} {plan.compiler_peak_bytes / gib:10.3f} GiB")
    if plan.attention:
        lines.append(f"attention: {plan.attention['impl']} ({plan.attention['reason']})")
    if any(plan.collectives.values()):
        lines.append("collective ops in the program: " + ", ".join(f"{k} {v}" for k, v in plan.collectives.items() if v))
    if plan.accelerator is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        note = ("; JAX preallocates 75% of a GPU unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise"
                if plan.accelerator.startswith("NVIDIA") else "")
        lines.append(f"{verdict} on {plan.accelerator} ({plan.peak_bytes / plan.capacity_bytes:.0%} of "
                     f"{plan.capacity_bytes / gib:.1f} GiB{note})")
    if plan.platform == "cpu":
        lines.append("parameters, optimizer state and batch are exact; temporaries are the CPU compiler's buffer "
                     "assignment (an estimate for GPUs; --topology compiles for TPUs with their own compiler)")
    elif plan.platform == "tpu":
        lines.append("compiled by the TPU compiler (libtpu) for this topology: every figure is the TPU program's")
    return "\n".join(lines)
