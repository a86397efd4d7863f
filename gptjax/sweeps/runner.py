"""Running a sweep, resumably, here or on a cluster.

The sweep directory (default runs/sweeps/<name>) holds `sweep.yaml` (the spec as run),
`sweep.json` (every run: name, directory, overrides) and one run directory per run. A run's
status is read from its own directory, wherever it lives (object storage included), so status
is the same whoever ran it (this machine, a SLURM array task, a TPU host):

    finished      result.json says so
    failed        result.json says diverged or failed (re-run only with --retry-failed)
    interrupted   checkpoints but no final result (resumes from them)
    pending       nothing yet

Running the same command again runs only what is not finished. Locally, `jobs` runs go at once,
each on its share of the machine (one GPU each; a slice of the CPU cores otherwise); a failed run
is recorded and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import tqdm
import yaml

from gptjax import storage
from gptjax.config import ConfigError
from gptjax.sweeps.spec import Run, SweepConfig, expand

MANIFEST = "sweep.json"
RESULT = "result.json"
STATUSES = ("finished", "failed", "interrupted", "pending")


def default_dir(sweep: SweepConfig) -> str:
    return f"runs/sweeps/{sweep.name}"


def run_dir_of(directory: str, run: Run | str) -> str:
    return f"{str(directory).rstrip('/')}/{run if isinstance(run, str) else run.name}"


def read_result(run_dir: str) -> dict | None:
    path = storage.as_path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def status_of(run_dir: str) -> tuple[str, str | None]:
    """(status, error) of one run from what its directory holds."""
    result = read_result(run_dir)
    if result is not None:
        if result.get("status") == "finished":
            return "finished", None
        if result.get("status") in ("diverged", "failed"):
            return "failed", result.get("error") or result.get("status")
    checkpoints = storage.as_path(run_dir) / "checkpoints"
    if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "interrupted", None
    return "pending", None


def write_manifest(directory: str, sweep: SweepConfig, runs: list[Run]) -> None:
    """sweep.yaml and sweep.json; rewritten on every `sweep run`, so they describe the sweep as run."""
    root = storage.as_path(directory)
    storage.write_text(root / "sweep.yaml", yaml.safe_dump(dataclasses.asdict(sweep), sort_keys=False))
    entries = [{"name": r.name, "run_dir": run_dir_of(directory, r), "overrides": list(r.overrides),
                "point": r.point, "seed": r.seed, "budget": r.budget} for r in runs]
    storage.write_text(root / MANIFEST, json.dumps({"name": sweep.name, "base": sweep.base, "runs": entries},
                                                   indent=1, default=str))


def read_manifest(directory: str) -> dict:
    path = storage.as_path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a sweep directory: it has no {MANIFEST} (run `gptjax sweep run` "
                                "first)")
    return json.loads(path.read_text())


def statuses(directory: str) -> list[dict]:
    """Every run of the manifest with its current status and error."""
    rows = []
    for entry in read_manifest(directory)["runs"]:
        status, error = status_of(entry["run_dir"])
        rows.append({**entry, "status": status, "error": error})
    return rows


def status_text(directory: str) -> str:
    rows = statuses(directory)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines = [f"{directory}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    lines += [f"  failed {r['name']}: {r['error']}" for r in rows if r["status"] == "failed"]
    return "\n".join(lines)


def to_run(runs: list[Run], directory: str, retry_failed: bool) -> list[Run]:
    wanted = ("pending", "interrupted", "failed") if retry_failed else ("pending", "interrupted")
    return [r for r in runs if status_of(run_dir_of(directory, r))[0] in wanted]


# --- local execution -------------------------------------------------------------------------

def device_shares(jobs: int) -> list[dict]:
    """One share of this machine per concurrent run: a GPU each where there are GPUs, otherwise
    a slice of the CPU cores (pinned by affinity, which XLA's thread pools follow)."""
    gpus = _gpu_count()
    if gpus:
        if jobs > gpus:
            raise ConfigError(f"--jobs {jobs} exceeds the {gpus} GPUs on this machine (one run per GPU)")
        return [{"env": {"CUDA_VISIBLE_DEVICES": str(i)}, "cpus": None} for i in range(jobs)]
    cpus = sorted(os.sched_getaffinity(0))
    if jobs > len(cpus):
        raise ConfigError(f"--jobs {jobs} exceeds the {len(cpus)} CPU cores available here")
    per = len(cpus) // jobs
    return [{"env": {}, "cpus": set(cpus[i * per:(i + 1) * per])} for i in range(jobs)]


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def train_command(base: str, run: Run, run_dir: str) -> list[str]:
    return [sys.executable, "-m", "gptjax.cli", "train", base, *run.overrides, "--run-dir", run_dir, "--no-progress"]


def run_local(sweep: SweepConfig, runs: list[Run], directory: str, *, jobs: int = 1, progress: bool = True) -> int:
    """Run `runs` here, `jobs` at a time; returns how many failed."""
    shares = device_shares(jobs)
    queue, active, failed = list(runs), {}, 0
    bar = tqdm.tqdm(total=len(runs), unit="run", disable=not progress, dynamic_ncols=True)
    logs = storage.as_path(directory) / "logs"
    while queue or active:
        while queue and len(active) < jobs:
            share = next(i for i in range(jobs) if i not in active.values())
            run = queue.pop(0)
            active[_start(sweep, run, directory, shares[share], logs)] = share
        time.sleep(0.2)
        for proc in [p for p in active if p.poll() is not None]:
            del active[proc]
            failed += _finish(proc)
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return failed


def _start(sweep: SweepConfig, run: Run, directory: str, share: dict, logs) -> subprocess.Popen:
    run_dir = run_dir_of(directory, run)
    log_path = f"{os.fspath(logs)}/{run.name}.log" if not storage.is_remote(logs) else os.devnull
    if log_path != os.devnull:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "a")
    cpus = share["cpus"]
    proc = subprocess.Popen(train_command(sweep.base, run, run_dir), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **share["env"]},
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    proc.gptjax = (run, run_dir, log_path, log)  # what _finish needs
    return proc


def _finish(proc: subprocess.Popen) -> int:
    """Record a run that exited without its own result (a crash, a kill) as failed; 1 if it failed."""
    run, run_dir, log_path, log = proc.gptjax
    log.close()
    if proc.returncode == 0:
        return 0 if status_of(run_dir)[0] == "finished" else 1
    if read_result(run_dir) is None or read_result(run_dir).get("status") == "finished":
        tail = _tail(log_path)
        storage.write_text(storage.as_path(run_dir) / RESULT, json.dumps(
            {"status": "failed", "exit_code": proc.returncode, "error": tail or f"exit code {proc.returncode}"},
            indent=1))
    return 1


def _tail(path: str, lines: int = 3) -> str:
    try:
        text = [line for line in open(path).read().splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


# --- entry point -----------------------------------------------------------------------------

def run_sweep(sweep: SweepConfig, directory: str | None = None, *, jobs: int = 1, launcher: str = "local",
              dry_run: bool = False, retry_failed: bool = False, progress: bool = True,
              launcher_args=None) -> int:
    """`gptjax sweep run`: validate every run, write the manifest, run what is not finished."""
    runs = expand(sweep)  # every config is resolved and validated before anything starts
    directory = directory or default_dir(sweep)
    todo = to_run(runs, directory, retry_failed)
    if dry_run:
        for run in runs:
            mark = "run " if run in todo else "skip"
            print(f"{mark} {run.name}: {' '.join(run.overrides)}")
        print(f"{len(todo)} of {len(runs)} runs to run in {directory}")
        return 0
    write_manifest(directory, sweep, runs)
    print(f"{len(todo)} of {len(runs)} runs to run in {directory} ({len(runs) - len(todo)} finished or failed)",
          file=sys.stderr)
    if not todo:
        return 0
    if launcher == "local":
        failed = run_local(sweep, todo, directory, jobs=jobs, progress=progress)
        print(status_text(directory))
        return 1 if failed else 0
    return _submit(sweep, todo, directory, launcher, launcher_args)


def _submit(sweep: SweepConfig, todo: list[Run], directory: str, launcher: str, args) -> int:
    """The cluster launchers, with one job per run still to do (a job array on SLURM)."""
    from gptjax.launch import BACKENDS
    from gptjax.launch.common import Job

    jobs = [Job(sweep.base, run.overrides, run_dir_of(directory, run)) for run in todo]
    args.array = True  # SLURM: an array even for one run, so logs stay in the sweep directory
    return BACKENDS[launcher].launch(jobs, args)
