"""What every launcher shares: jobs, the train command, and the launch record."""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
import sys

from gptjax.config import ConfigError
from gptjax.config_files import load_train_config
from gptjax.store import paths
from gptjax.store.provenance import git_commit
from gptjax.store.rundir import RunDir
from gptjax.training import resume


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


def make_jobs(config: str, overrides: list[str], run_dir: str | None, *, dry_run: bool = False) -> list[Job]:
    """The job of one run, its config validated (and, when it resumes, compared with the run's)
    before anything is submitted. A dry run reads no run directory: it prints what would be
    submitted from a machine that may not reach the bucket. Sweeps go through `gptjax sweep run
    --launcher NAME`."""
    cfg = load_train_config(config, overrides)
    job = Job(config, tuple(overrides), run_dir or f"runs/{cfg.name}")
    if not dry_run:
        resume.check(RunDir(job.run_dir), cfg)  # a resumed run that cannot continue is refused here
    return [job]


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
        if not paths.is_remote(job.run_dir) and not pathlib.Path(job.run_dir).is_absolute():
            raise ConfigError(f"--run-dir {job.run_dir!r}: {backend} runs span hosts, so give gs://BUCKET/..., "
                              "s3://BUCKET/... or an absolute path on storage every host mounts "
                              "(e.g. /mnt/shared/runs/NAME)")
