"""`gptjax sweep plan`: every run of a sweep on its target before anything is submitted.

For each run: the resolved model and its exact parameter count, training FLOPs (result.json's
convention: FLOPs per token times the tokens of every step), the mesh it will use, per-device
memory from its compiled train step (tools/plan.py: the TPU compiler's own figures on a TPU
topology), whether it fits, and when it does not, the first setting that makes it fit among full
remat and then micro-batches (optim.grad_accum 2, 4, ...), each one tried listed. Then the cost:
device-hours and wall time at a stated MFU.

The mesh, unless the sweep sets one: all devices data-parallel while the parameters and optimizer
state take at most STATE_SHARE of a device's memory, else the least FSDP that brings them under it
(a 25K-parameter run gets pure data parallelism, a billion-parameter run FSDP). A cheap check first
(parameters and optimizer state at the widest FSDP against the device) rejects what cannot fit
without compiling; programs are compiled once per distinct shape, mesh and setting, so a sweep over
seeds and learning rates compiles one program per size.

`plan.json` in the sweep directory keeps the plan and its target; `gptjax sweep run` uses each
run's mesh and settings from it and refuses, before launching anything, a run it says does not fit.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from typing import Any

from gptjax.config import ConfigError, MeshConfig, TrainConfig, fingerprint
from gptjax.runtime import hardware
from gptjax.store import paths
from gptjax.sweeps.spec import Run

PLAN = "plan.json"
STATE_SHARE = 0.5  # of a device's memory for parameters and optimizer state; the rest for activations
DEFAULT_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the sweep will run: `devices` of one kind, their memory and peak FLOP/s."""

    description: str
    devices: int
    accelerator: hardware.Accelerator | None = None  # None: fake CPU devices of no named kind
    topology: str | None = None
    mesh: MeshConfig | None = None  # one mesh for every run (--mesh)
    memory_bytes: float | None = None  # without an accelerator: each device's share of this machine

    @property
    def capacity_bytes(self) -> float | None:
        return self.accelerator.memory_bytes if self.accelerator is not None else self.memory_bytes

    def peak_flops(self, compute_dtype: str) -> tuple[float, str]:
        if self.accelerator is not None:
            peak = self.accelerator.bf16 if compute_dtype == "bfloat16" else self.accelerator.fp32
            return peak, f"published: {self.accelerator.name} {compute_dtype} dense"
        measured = hardware.peak_flops(None, compute_dtype)
        return measured.per_device, measured.source

    def to_dict(self) -> dict:
        return {"description": self.description, "devices": self.devices, "topology": self.topology,
                "accelerator": self.accelerator.key if self.accelerator else None,
                "capacity_bytes": self.capacity_bytes,
                "mesh": dataclasses.asdict(self.mesh) if self.mesh is not None else None}


TPU_KEYS = {"v4": "tpu-v4", "v5e": "tpu-v5e", "v5litepod": "tpu-v5e", "v5p": "tpu-v5p", "v6e": "tpu-v6e"}


def accelerator(key: str) -> hardware.Accelerator:
    by_key = {a.key: a for a in hardware.ACCELERATORS if a.key}
    if key.lower() not in by_key:
        raise ConfigError(f"--accelerator {key!r} is not one of {', '.join(by_key)}")
    return by_key[key.lower()]


def tpu_accelerator(topology: str) -> hardware.Accelerator:
    generation = topology.split(":")[0].lower()
    if generation not in TPU_KEYS:
        raise ConfigError(f"--topology {topology!r}: the TPU generation {generation!r} is not one of "
                          f"{', '.join(TPU_KEYS)} (e.g. v5e:2x4)")
    return accelerator(TPU_KEYS[generation])


# --- one run ------------------------------------------------------------------------------------

def _with(cfg: TrainConfig, **sections) -> TrainConfig:
    """cfg with fields replaced, e.g. mesh=MeshConfig(...), model={'remat': 'full'}."""
    changes = {}
    for name, value in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(cfg, **changes)


def _state_bytes(cfg: TrainConfig, devices) -> int:
    """Parameters and optimizer state per device on cfg's mesh (abstract: nothing allocated)."""
    from gptjax.runtime import sharding
    from gptjax.training import trainer

    tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh, devices))
    return sharding.per_device_bytes(tr.abstract_state)


def mesh_candidates(n: int) -> list[MeshConfig]:
    """data x fsdp over n devices, least FSDP first."""
    return [MeshConfig(data=n // f, fsdp=f, tensor=1) for f in range(1, n + 1) if n % f == 0]


def choose_mesh(cfg: TrainConfig, target: Target, devices) -> tuple[MeshConfig | None, int, str]:
    """(mesh, state bytes per device on it, why), or (None, bytes at the widest FSDP, why not)."""
    if target.mesh is not None:
        return target.mesh, _state_bytes(_with(cfg, mesh=target.mesh), devices), "the mesh given (--mesh)"
    if cfg.mesh != MeshConfig():
        return cfg.mesh, _state_bytes(cfg, devices), "the sweep's mesh"
    candidates = mesh_candidates(target.devices)
    if cfg.data.batch_size % target.devices:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size} is not divisible by the target's "
                          f"{target.devices} devices; give a batch that is, or plan with --mesh")
    capacity = target.capacity_bytes
    if capacity is None:
        return candidates[0], _state_bytes(_with(cfg, mesh=candidates[0]), devices), "data parallel (no memory limit given)"
    widest = _state_bytes(_with(cfg, mesh=candidates[-1]), devices)
    if widest > capacity:  # the cheap check: nothing to compile
        return None, widest, (f"parameters and optimizer state alone need {_gib(widest)} per device even at "
                              f"fsdp={target.devices}, over the device's {_gib(capacity)}")
    for mesh in candidates:
        state = widest if mesh is candidates[-1] else _state_bytes(_with(cfg, mesh=mesh), devices)
        if state <= STATE_SHARE * capacity:
            kind = "data parallel" if mesh.fsdp == 1 else f"fsdp={mesh.fsdp}"
            return mesh, state, f"{kind}: the least FSDP whose state takes at most {STATE_SHARE:.0%} of a device"
    return candidates[-1], widest, f"fsdp={target.devices}: the state takes over {STATE_SHARE:.0%} of a device anyway"


def settings(cfg: TrainConfig, devices_on_batch: int) -> list[dict]:
    """What is tried, in order, when a run does not fit: as it is, full remat, then micro-batches."""
    out = [{}]
    if cfg.model.remat != "full":
        out.append({"model.remat": "full"})
    accum = cfg.optim.grad_accum * 2
    while cfg.data.batch_size % (accum * devices_on_batch) == 0:
        out.append({"model.remat": "full", "optim.grad_accum": accum})
        accum *= 2
    return out


def _apply(cfg: TrainConfig, setting: dict) -> TrainConfig:
    model = {k.split(".")[1]: v for k, v in setting.items() if k.startswith("model.")}
    optim = {k.split(".")[1]: v for k, v in setting.items() if k.startswith("optim.")}
    return _with(cfg, **({"model": model} if model else {}), **({"optim": optim} if optim else {}))


def _program_key(cfg: TrainConfig) -> str:
    """What the compiled step depends on: everything but the schedule, seed, data and cadence."""
    return json.dumps({"model": dataclasses.asdict(cfg.model), "optim": [cfg.optim.name, cfg.optim.grad_accum,
                       cfg.optim.grad_clip is not None, cfg.optim.z_loss > 0], "batch": cfg.data.batch_size,
                       "seq": cfg.resolved_seq_len, "mesh": dataclasses.asdict(cfg.mesh),
                       "lora": dataclasses.asdict(cfg.finetune)}, sort_keys=True, default=str)


class Compiler:
    """Compiled plans, one per distinct program."""

    def __init__(self, target: Target, devices):
        self.target, self.devices, self.programs = target, devices, {}

    def __call__(self, cfg: TrainConfig):
        from gptjax.tools import plan as plan_lib

        key = _program_key(cfg)
        if key not in self.programs:
            try:
                self.programs[key] = plan_lib.make_plan(cfg, devices=self.devices, topology=self.target.topology)
            except Exception as e:  # the TPU compiler refuses a program larger than the chip
                if "RESOURCE_EXHAUSTED" not in str(e):
                    raise
                self.programs[key] = CompilerRefused(str(e).strip().splitlines()[0])
        return self.programs[key]


@dataclasses.dataclass(frozen=True)
class CompilerRefused:
    """A program the compiler would not build because it needs more memory than a device has
    (the TPU compiler's CompileTimeHbmOom); its figure, where it gives one, is the temporaries'."""

    message: str

    @property
    def temp_bytes(self) -> int | None:
        m = re.search(r"required for HLO temporaries \(([\d.]+)([KMG])\)", self.message)
        return int(float(m[1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[m[2]]) if m else None

    peak_bytes = temp_bytes
    compiler_peak_bytes = None


def plan_run(run: Run, target: Target, compile_plan: Compiler, mfu: float) -> dict:
    from gptjax.model import counting

    cfg = run.config
    seq = cfg.resolved_seq_len
    tokens = cfg.steps * cfg.data.batch_size * seq
    flops = counting.flops_per_token(cfg.model, seq) * tokens
    peak, peak_source = target.peak_flops(cfg.model.compute_dtype)
    row: dict[str, Any] = {
        "name": run.name, "fingerprint": fingerprint(cfg), "params": counting.param_counts(cfg.model, seq).total,
        "steps": cfg.steps, "tokens": tokens, "flops": flops,
        "device_hours": flops / (peak * mfu) / 3600, "peak_flops_per_device": peak, "peak_flops_source": peak_source}
    row["wall_hours"] = row["device_hours"] / target.devices
    mesh, state, why = choose_mesh(cfg, target, compile_plan.devices)
    row.update(state_bytes=state, mesh_reason=why, tried=[], overrides=[])
    if mesh is None:
        return {**row, "mesh": None, "peak_bytes": None, "fits": False, "why": why}
    capacity = target.capacity_bytes
    # A chosen mesh that no setting makes fit gives way to wider FSDP; a mesh given is kept.
    meshes = [mesh] + ([m for m in mesh_candidates(target.devices) if m.fsdp > mesh.fsdp]
                       if target.mesh is None and run.config.mesh == MeshConfig() else [])
    for mesh in meshes:
        on_mesh = _with(cfg, mesh=mesh)
        for setting in settings(on_mesh, mesh.data * mesh.fsdp * mesh.dcn_data):
            p = compile_plan(_apply(on_mesh, setting))
            refused = isinstance(p, CompilerRefused)
            fits = False if refused else None if capacity is None else p.peak_bytes <= capacity
            row["tried"].append({"mesh": f"{mesh.data}x{mesh.fsdp}x{mesh.tensor}", **setting, "peak_bytes": p.peak_bytes,
                                 "fits": fits, **({"compiler": p.message} if refused else {})})
            if fits is not False:
                break
        if fits is not False:
            break
    row["mesh"] = dataclasses.asdict(mesh)
    if mesh != meshes[0]:  # widened: the state per device is the final mesh's
        row["state_bytes"] = _state_bytes(_with(cfg, mesh=mesh), compile_plan.devices)
    chosen = row["tried"][-1]
    setting = {k: v for k, v in chosen.items() if k not in ("mesh", "peak_bytes", "fits", "compiler")}
    mesh_overrides = [f"mesh.{k}={v}" for k, v in row["mesh"].items()]
    row.update(peak_bytes=p.peak_bytes, compiler_peak_bytes=p.compiler_peak_bytes, temp_bytes=p.temp_bytes,
               fits=chosen["fits"], overrides=mesh_overrides + [f"{k}={v}" for k, v in setting.items()],
               why=("fits" if chosen["fits"] else "no memory limit given" if chosen["fits"] is None else
                    f"does not fit on mesh {chosen['mesh']} (data x fsdp x tensor) even with "
                    f"{', '.join(f'{k}={v}' for k, v in setting.items()) or 'its settings'}: "
                    f"{_gib(p.peak_bytes)} per device over {_gib(capacity)}"
                    + (" (the compiler refused the program: temporaries alone)" if isinstance(p, CompilerRefused)
                       else "")))
    return row


def plan_sweep(runs: list[Run], target: Target, devices, *, mfu: float = DEFAULT_MFU) -> dict:
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu}: give the expected model FLOPs utilisation as a fraction in (0, 1]")
    compiler = Compiler(target, devices)
    rows = [plan_run(run, target, compiler, mfu) for run in runs]
    return {"target": target.to_dict(), "mfu": mfu, "programs_compiled": len(compiler.programs), "runs": rows,
            "total_device_hours": sum(r["device_hours"] for r in rows),
            "total_wall_hours": sum(r["wall_hours"] for r in rows),
            "fits": all(r["fits"] is not False for r in rows)}


# --- output ---------------------------------------------------------------------------------------

def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _hours(h: float) -> str:
    return f"{h * 3600:.0f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def table(plan: dict) -> str:
    head = ("run", "params", "FLOPs", "mesh", "state/dev", "peak/dev", "fits", "setting", "device-h", "wall")
    rows = [head]
    for r in plan["runs"]:
        mesh = "-" if r["mesh"] is None else f"{r['mesh']['data']}x{r['mesh']['fsdp']}x{r['mesh']['tensor']}"
        setting = " ".join(o for o in r["overrides"] if not o.startswith("mesh.")) or "-"
        fits = {True: "yes", False: "NO", None: "?"}[r["fits"]]
        rows.append((r["name"], f"{r['params']:,}", f"{r['flops']:.2e}", mesh, _gib(r["state_bytes"]),
                     _gib(r["peak_bytes"]), fits, setting, f"{r['device_hours']:.3g}", _hours(r["wall_hours"])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    t = plan["target"]
    lines += ["", f"target: {t['description']}; {plan['programs_compiled']} program(s) compiled for "
              f"{len(plan['runs'])} run(s); cost at MFU {plan['mfu']:.0%}: {plan['total_device_hours']:.3g} "
              f"device-hours, {_hours(plan['total_wall_hours'])} of wall time one run after another"]
    for r in plan["runs"]:
        if r["fits"] is False:
            lines.append(f"does not fit: {r['name']}: {r['why']}")
    return "\n".join(lines)


def to_csv(plan: dict) -> str:
    columns = ["name", "params", "flops", "tokens", "steps", "mesh", "state_bytes", "peak_bytes", "fits", "overrides",
               "device_hours", "wall_hours"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in plan["runs"]:
        writer.writerow([json.dumps(r[c]) if c == "mesh" else " ".join(r[c]) if c == "overrides" else r[c]
                         for c in columns])
    return out.getvalue()


def save(directory: str, plan: dict) -> None:
    root = paths.as_path(directory)
    paths.write_text(root / PLAN, json.dumps(plan, indent=1, default=str))
    paths.write_text(root / "plan.csv", to_csv(plan))


def read(directory: str) -> dict | None:
    path = paths.as_path(directory) / PLAN
    return json.loads(path.read_text()) if path.exists() else None


def apply(plan: dict | None, runs: list[Run], *, force: bool = False) -> tuple[list[Run], list[str]]:
    """The runs with the plan's mesh and settings added, and notes; refuses (ConfigError) runs the
    plan says do not fit unless force. A run whose config changed since the plan is left as it is
    (noted: plan again)."""
    if plan is None:
        return runs, []
    by_name = {r["name"]: r for r in plan["runs"]}
    out, notes, refused = [], [], []
    for run in runs:
        row = by_name.get(run.name)
        if row is None or row["fingerprint"] != fingerprint(run.config):
            notes.append(f"{run.name}: not in the stored plan as it is now (plan the sweep again)")
            out.append(run)
            continue
        if row["fits"] is False:
            refused.append(f"{run.name}: {row['why']}")
        out.append(dataclasses.replace(run, overrides=(*run.overrides, *row["overrides"])))
    if refused and not force:
        raise ConfigError(f"the stored plan ({PLAN}, target {plan['target']['description']}) says {len(refused)} "
                          "run(s) do not fit, so nothing was started:\n  " + "\n  ".join(refused)
                          + "\nChange the sweep (smaller batch, more devices) and plan again, or run anyway with --force")
    return out, notes
