"""Where a run reports besides metrics.jsonl and TensorBoard: a start-up summary, plain progress
lines for logs that are not a terminal (cluster jobs, sweeps), and Weights & Biases.

W&B (`logging.wandb`, the `wandb` extra, imported only when enabled) gets one W&B run per gptjax
run. Its id is kept in the run directory (wandb.json), so every restart continues the same W&B
run; rows are plotted against their own `step` (a resume repeats the steps after its checkpoint,
which W&B's internal step could not take back). The config goes at init, result.json and the
config file at the end; a sweep sets the group to its name and its analysis adds the plots.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
import uuid
from typing import Any

from gptjax.config import ConfigError, WandbConfig
from gptjax.store import paths

WANDB_ID = "wandb.json"


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressLines:
    """`step 120/2000 (6%) loss 2.3456 lr 0.0012 tok/s 12.3K mfu 3.4% eta 4m10s` every `every`
    steps. The ETA is the median time of the last WINDOW training steps times the steps left: an
    evaluation, a checkpoint or one slow step is not extrapolated over the rest of the run."""

    WINDOW = 50

    def __init__(self, total: int, every: int, enabled: bool, out=None):
        self.total, self.every, self.enabled = total, every, enabled
        self.out = out or sys.stderr
        self.recent: collections.deque[float] = collections.deque(maxlen=self.WINDOW)

    def step(self, row: dict, seconds: float) -> None:
        self.recent.append(seconds)
        step = row["step"]
        if not self.enabled or (step % self.every and step != self.total):
            return
        eta = duration(statistics.median(self.recent) * (self.total - step))
        print(f"step {step}/{self.total} ({100 * step / self.total:.0f}%) loss {row['loss']:.4f} lr {row['lr']:.3g} "
              f"tok/s {human(row['tokens_per_sec'])} mfu {100 * row['mfu']:.1f}% eta {eta}", file=self.out, flush=True)


def startup_summary(cfg, counts, n_devices: int, platform: str, mesh_shape: dict, progress) -> list[str]:
    """What a run is about to do, before its first step."""
    seq = cfg.resolved_seq_len
    per_step = cfg.data.batch_size * seq
    remaining = cfg.steps - progress.step
    tokens = progress.tokens + remaining * per_step
    flops = progress.flops + remaining * per_step * counts.flops_per_token
    mesh = " ".join(f"{k}={v}" for k, v in mesh_shape.items())
    lines = [f"model: {counts.total:,} parameters ({counts.non_embedding:,} non-embedding); {n_devices} {platform} "
             f"device(s), mesh {mesh}",
             f"budget: {cfg.steps:,} steps x {cfg.data.batch_size} sequences x {seq} tokens = {per_step:,} "
             f"tokens/step; {human(tokens)} tokens, {flops:.3g} FLOPs ({counts.flops_per_token:.3g} per token)"]
    if progress.step:
        lines.append(f"so far: step {progress.step:,}, example {progress.examples:,}, {human(progress.tokens)} tokens, "
                     f"{progress.flops:.3g} FLOPs")
    return lines


def require_wandb() -> None:
    """Refuse logging.wandb before anything starts when the package is missing."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("logging.wandb needs the wandb package: pip install 'gptjax[wandb]' (or remove "
                          "logging.wandb)")


class Wandb:
    """The W&B run of one gptjax run (process 0 only)."""

    def __init__(self, cfg, run_dir, wcfg: WandbConfig):
        import wandb

        self.run_dir = run_dir
        id_file = paths.as_path(run_dir) / WANDB_ID
        saved = json.loads(id_file.read_text()) if id_file.exists() else {}
        run_id = saved.get("id") or uuid.uuid4().hex[:12]  # W&B takes any id of letters and digits
        self.local = local = _local_dir(run_dir)
        self.run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group, mode=wcfg.mode, id=run_id,
                              resume="allow", name=cfg.name, dir=local, config=cfg.to_dict(),
                              settings=wandb.Settings(quiet=True))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        if not saved:
            paths.write_text(id_file, json.dumps({"id": run_id, "project": wcfg.project, "entity": wcfg.entity,
                                                    "group": wcfg.group}))

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def finish(self, result: dict, files: list[str]) -> None:
        """The result as the run's summary, and its files, uploaded with it."""
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        summary.update({f"eval/{name}/{k}": v for name, metrics in result.get("evals", {}).items()
                        for k, v in metrics.items() if k != "step"})
        self.run.summary.update(summary)
        for name in files:
            path, local = paths.as_path(self.run_dir) / name, os.path.join(self.local, name)
            if path.exists():
                if paths.is_remote(path):  # W&B uploads local files
                    paths.copy_file(path, local)
                self.run.save(local, base_path=self.local, policy="now")
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _local_dir(run_dir) -> str:
    """W&B writes its own files locally: inside a local run directory, else in the cache."""
    if paths.is_remote(run_dir):
        import hashlib

        key = hashlib.sha256(os.fspath(run_dir).encode()).hexdigest()[:16]
        path = paths.cache_root() / "staging" / key
    else:
        path = paths.as_path(run_dir)
    os.makedirs(os.fspath(path), exist_ok=True)
    return os.fspath(path)


def log_analysis(directory, wcfg: WandbConfig, name: str, summary: dict[str, Any], plots: list[str]) -> None:
    """The sweep's analysis as a W&B run of its group: the fitted laws' numbers, the warnings and
    the plots (`plots`: local PNG files)."""
    import wandb

    local = _local_dir(directory)
    run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group or name, mode=wcfg.mode,
                     job_type="analysis", name=f"{name}-analysis", dir=local, settings=wandb.Settings(quiet=True))
    flat = {}
    for law, fit in summary.get("fits", {}).items():
        flat.update({f"{law}/{k}": v for k, v in fit.items() if isinstance(v, (int, float))})
    run.summary.update({**flat, "warnings": len(summary.get("warnings", []))})
    images = {os.path.basename(p): wandb.Image(p) for p in plots if os.path.isfile(p)}
    if images:
        run.log(images)
    run.finish()
