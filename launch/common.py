"""What every launcher shares: jobs, the train command, sweeps, and the launch record."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import sys

import draccus
import yaml

from gptjax.checkpoint_io import write_text_atomic
from gptjax.config import ConfigError, load_train_config
from gptjax.run import git_commit


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a config (YAML file or preset), overrides, and its run directory."""

    config: str
    overrides: tuple[str, ...]
    run_dir: pathlib.Path

    def train_args(self, python: str = "python") -> list[str]:
        return [python, "-m", "gptjax.cli", "train", self.config, *self.overrides, "--run-dir", str(self.run_dir),
                "--no-progress"]


def load_sweep(path: str) -> list[tuple[str, ...]]:
    """A sweep file: a YAML list of override mappings, e.g. `- {optim.lr: 1.0e-3, seed: 1}`."""
    data = yaml.safe_load(pathlib.Path(path).read_text())
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise ConfigError(f"sweep {path}: expected a non-empty YAML list of mappings (override sets), "
                          f"got {type(data).__name__}")
    return [tuple(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                  for k, v in d.items()) for d in data]


def make_jobs(config: str, overrides: list[str], run_dir: str | None, sweep: str | None) -> list[Job]:
    """Jobs for a run or a sweep; every resolved config is validated before anything is submitted."""
    base_cfg = load_train_config(config, overrides)
    base = pathlib.Path(run_dir) if run_dir else pathlib.Path("runs") / base_cfg.name
    sets = load_sweep(sweep) if sweep else [()]
    jobs = []
    for i, extra in enumerate(sets):
        all_overrides = (*overrides, *extra)
        load_train_config(config, list(all_overrides))
        jobs.append(Job(config, all_overrides, base / f"{i:03d}" if sweep else base))
    return jobs


def record(job: Job, backend: str, submitted: str) -> None:
    """The run directory gets the resolved config and what was submitted, with the git commit."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job.run_dir / "config.yaml", draccus.dump(load_train_config(job.config, list(job.overrides))))
    info = {"backend": backend, "git_commit": git_commit(), "submitted": submitted, "argv": sys.argv}
    write_text_atomic(job.run_dir / "launch.json", json.dumps(info, indent=1))


def shell_join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def require_shared_run_dir(jobs: list[Job], backend: str) -> None:
    """Hosts of one run must share its directory (checkpoints, manifests): an absolute path on a
    filesystem they all mount. A relative path would land on each host's own disk."""
    for job in jobs:
        if not job.run_dir.is_absolute():
            raise ConfigError(f"--run-dir {str(job.run_dir)!r}: {backend} runs span hosts, so give an absolute path "
                              "on storage every host mounts (e.g. /mnt/shared/runs/NAME)")
