"""What every launcher shares: jobs, the train command, sweeps, and the launch record."""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
import sys

import yaml

from gptjax import storage
from gptjax.config import ConfigError, load_train_config
from gptjax.provenance import git_commit
from gptjax.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a config (YAML file or preset), overrides, and its run directory (a
    local path, gs:// or s3://)."""

    config: str
    overrides: tuple[str, ...]
    run_dir: str
    command: tuple[str, ...] | None = None  # another gptjax verb and its arguments (search workers)

    def train_args(self, python: str = "python") -> list[str]:
        if self.command is not None:
            return [python, "-m", "gptjax.cli", *self.command]
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
    base = run_dir or f"runs/{base_cfg.name}"
    sets = load_sweep(sweep) if sweep else [()]
    jobs = []
    for i, extra in enumerate(sets):
        all_overrides = (*overrides, *extra)
        cfg = load_train_config(config, list(all_overrides))
        job = Job(config, all_overrides, f"{base.rstrip('/')}/{i:03d}" if sweep else base)
        RunDir(job.run_dir).check_resume(cfg)  # a resumed run that cannot continue is refused here
        jobs.append(job)
    return jobs


def record(job: Job, backend: str, submitted: str) -> None:
    """launch.json in the run directory: what was submitted, with the git commit. The resolved
    config is the run's own to write (after it compared it with the one it resumes)."""
    info = {"backend": backend, "git_commit": git_commit(), "submitted": submitted, "argv": sys.argv}
    RunDir(job.run_dir).record_launch(info)


def shell_join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def require_shared_run_dir(jobs: list[Job], backend: str) -> None:
    """Hosts of one run must share its directory (checkpoints, manifests): gs://, s3://, or an
    absolute path on a filesystem they all mount. A relative path would land on each host's disk."""
    for job in jobs:
        if not storage.is_remote(job.run_dir) and not pathlib.Path(job.run_dir).is_absolute():
            raise ConfigError(f"--run-dir {job.run_dir!r}: {backend} runs span hosts, so give gs://BUCKET/..., "
                              "s3://BUCKET/... or an absolute path on storage every host mounts "
                              "(e.g. /mnt/shared/runs/NAME)")
