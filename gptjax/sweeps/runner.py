"""Running a sweep, resumably, here or on a cluster.

The sweep directory (default runs/sweeps/<name>) holds `sweep.yaml` (the spec that produced the
runs there, paths resolved), `sweep.json` (every run: name, directory, overrides) and one run
directory per run. A run's status is read from its own directory, wherever it lives (object
storage included), so status is the same whoever ran it (this machine, a SLURM array task, a TPU
host):

    stale         its config.yaml differs from what the sweep file resolves to now in a field
                  that changes what is trained (config.fingerprint): never counted as finished,
                  never resumed; `--rerun-changed` moves it to superseded/ and trains it anew
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
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any

import tqdm
import yaml

from gptjax.config import ConfigError, trained_changes
from gptjax.errors import EXIT_HUNG
from gptjax.store import paths
from gptjax.store.rundir import RunDir
from gptjax.sweeps.spec import Run, SweepConfig, expand, load_sweep

MANIFEST = "sweep.json"
SPEC = "sweep.yaml"
RESULT = "result.json"
SUPERSEDED = "superseded"
STATUSES = ("finished", "failed", "interrupted", "pending", "stale")


class StaleRuns(ConfigError):
    """Runs trained with settings the sweep file no longer describes; nothing was started or moved."""


def default_dir(sweep: SweepConfig) -> str:
    return f"runs/sweeps/{sweep.name}"


def run_dir_of(directory: str, run: Run | str) -> str:
    return f"{str(directory).rstrip('/')}/{run if isinstance(run, str) else run.name}"


def read_result(run_dir: str) -> dict | None:
    path = paths.as_path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def status_of(run_dir: str) -> tuple[str, str | None]:
    """(status, error) of one run from what its directory holds (staleness aside: see `states`)."""
    result = read_result(run_dir)
    if result is not None:
        if result.get("status") == "finished":
            return "finished", None
        if result.get("status") in ("diverged", "failed"):
            return "failed", result.get("error") or result.get("status")
    checkpoints = paths.as_path(run_dir) / "checkpoints"
    if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "interrupted", None
    return "pending", None


def changes_of(run: Run, directory: str) -> list[tuple[str, Any, Any]]:
    """Fields that change what is trained, as (field, value in the run directory, value the sweep
    file gives now); empty for a run directory without a config yet."""
    rd = RunDir(run_dir_of(directory, run), read_only=True)
    if not rd.has_config():
        return []
    try:
        return trained_changes(rd.read_config(), run.config)
    except ConfigError as e:  # written by a gptjax that had other fields: it cannot be the same run
        return [("config.yaml", str(e), "readable by this gptjax")]


@dataclasses.dataclass(frozen=True)
class RunState:
    run: Run
    run_dir: str
    status: str
    error: str | None
    changes: tuple[tuple[str, Any, Any], ...] = ()


def states(runs: list[Run], directory: str) -> list[RunState]:
    out = []
    for run in runs:
        run_dir = run_dir_of(directory, run)
        changes = tuple(changes_of(run, directory))
        status, error = ("stale", None) if changes else status_of(run_dir)
        out.append(RunState(run, run_dir, status, error, changes))
    return out


def stale_text(stale: list[RunState], limit: int = 6) -> str:
    """One line per stale run: each differing field with the run directory's and the file's value."""
    lines = []
    for s in stale:
        fields = "; ".join(f"{k}: {a!r} in the run, {b!r} in the sweep file" for k, a, b in s.changes[:limit])
        more = f" (+{len(s.changes) - limit} more)" if len(s.changes) > limit else ""
        lines.append(f"  {s.run.name}: {fields}{more}")
    return "\n".join(lines)


def write_manifest(directory: str, sweep: SweepConfig, runs: list[Run]) -> None:
    """sweep.json: every run of the sweep as it is run now."""
    root = paths.as_path(directory)
    entries = [{"name": r.name, "run_dir": run_dir_of(directory, r), "overrides": list(r.overrides),
                "point": r.point, "seed": r.seed, "budget": r.budget} for r in runs]
    paths.write_text(root / MANIFEST, json.dumps({"name": sweep.name, "base": sweep.base, "runs": entries},
                                                   indent=1, default=str))


def spec_text(sweep: SweepConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(sweep), sort_keys=False)


def write_spec(directory: str, sweep: SweepConfig, archive: str | None) -> str | None:
    """sweep.yaml, the spec of the runs in `directory`. A different one already there is kept
    under `archive` (superseded/<time>/), never overwritten unseen; returns what was done."""
    path = paths.as_path(directory) / SPEC
    text = spec_text(sweep)
    if path.exists():
        old = path.read_text()
        if old == text:
            return None
        paths.write_text(paths.as_path(archive) / SPEC, old)
        paths.write_text(path, text)
        return f"{path} now holds this sweep file's spec; the previous one is kept in {archive}/{SPEC}"
    paths.write_text(path, text)
    return None


def read_spec(directory: str) -> SweepConfig | None:
    path = paths.as_path(directory) / SPEC
    return load_sweep(path) if path.exists() else None


def read_manifest(directory: str) -> dict:
    path = paths.as_path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a sweep directory: it has no {MANIFEST} (run `gptjax sweep run` "
                                "first)")
    return json.loads(path.read_text())


def statuses(directory: str, sweep: SweepConfig | None = None) -> list[dict]:
    """Every run of the manifest with its current status and error, and (against `sweep`, else
    the directory's own sweep.yaml) `changes`: what makes a stale run stale."""
    sweep = sweep or read_spec(directory)
    if sweep is None:  # a directory from before sweep.yaml was kept: nothing to compare with
        return statuses_unchecked(directory)
    current = {s.run.name: s for s in states(expand(sweep), directory)}
    rows = []
    for entry in statuses_unchecked(directory):
        state = current.get(entry["name"])
        if state is not None:
            entry.update(status=state.status, error=state.error, changes=list(state.changes))
        rows.append(entry)
    return rows


def statuses_unchecked(directory: str) -> list[dict]:
    """The manifest's runs with the status their directories give, staleness not checked."""
    rows = []
    for entry in read_manifest(directory)["runs"]:
        status, error = status_of(entry["run_dir"])
        rows.append({**entry, "status": status, "error": error, "changes": []})
    return rows


def status_text(directory: str, sweep: SweepConfig | None = None) -> str:
    rows = statuses(directory, sweep)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines = [f"{directory}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    lines += [f"  failed {r['name']}: {r['error']}" for r in rows if r["status"] == "failed"]
    lines += [f"  stale {r['name']}: " + "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in r["changes"])
              for r in rows if r["status"] == "stale"]
    return "\n".join(lines)


def to_run(runs: list[Run], directory: str, retry_failed: bool) -> list[Run]:
    wanted = ("pending", "interrupted", "failed") if retry_failed else ("pending", "interrupted")
    return [s.run for s in states(runs, directory) if s.status in wanted]


def supersede(directory: str, stale: list[RunState], archive: str) -> None:
    """Move stale run directories (and their logs) under `archive`: kept, never deleted."""
    for s in stale:
        if paths.exists(s.run_dir):
            paths.move_tree(s.run_dir, f"{archive}/{s.run.name}")
        log = paths.as_path(directory) / "logs" / f"{s.run.name}.log"
        if log.exists():
            paths.move_tree(log, f"{archive}/logs/{s.run.name}.log")


def archive_dir(directory: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{str(directory).rstrip('/')}/{SUPERSEDED}/{stamp}"


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


HUNG_RETRIES = 3  # restarts of a run that the watchdog ended as hung (exit code 3)


def run_local(sweep: SweepConfig, runs: list[Run], directory: str, *, jobs: int = 1, progress: bool = True) -> int:
    """Run `runs` here, `jobs` at a time; returns how many failed. A run the watchdog ended as hung
    starts again (it resumes from its last checkpoint), up to HUNG_RETRIES times, each retry
    recorded in the manifest."""
    shares = device_shares(jobs)
    queue, active, failed, retries = list(runs), {}, 0, {}
    bar = tqdm.tqdm(total=len(runs), unit="run", disable=not progress, dynamic_ncols=True)
    logs = paths.as_path(directory) / "logs"
    while queue or active:
        while queue and len(active) < jobs:
            share = next(i for i in range(jobs) if i not in active.values())
            run = queue.pop(0)
            active[_start(sweep, run, directory, shares[share], logs)] = share
        time.sleep(0.2)
        for proc in [p for p in active if p.poll() is not None]:
            del active[proc]
            run = proc.gptjax[0]
            if proc.returncode == EXIT_HUNG and retries.get(run.name, 0) < HUNG_RETRIES:
                proc.gptjax[3].close()
                retries[run.name] = retries.get(run.name, 0) + 1
                record_retry(directory, run.name, retries[run.name])
                queue.insert(0, run)
                continue
            failed += _finish(proc)
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return failed


def record_retry(directory: str, name: str, count: int) -> None:
    """The manifest's `retries`: how often each run was restarted after the watchdog ended it."""
    manifest = read_manifest(directory)
    manifest.setdefault("retries", {})[name] = count
    paths.write_text(paths.as_path(directory) / MANIFEST, json.dumps(manifest, indent=1, default=str))
    print(f"{name}: hung (exit code {EXIT_HUNG}); restarting it from its last checkpoint (retry {count} of "
          f"{HUNG_RETRIES})", file=sys.stderr, flush=True)


def _start(sweep: SweepConfig, run: Run, directory: str, share: dict, logs) -> subprocess.Popen:
    run_dir = run_dir_of(directory, run)
    log_path = f"{os.fspath(logs)}/{run.name}.log" if not paths.is_remote(logs) else os.devnull
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
        paths.write_text(paths.as_path(run_dir) / RESULT, json.dumps(
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
              dry_run: bool = False, retry_failed: bool = False, rerun_changed: bool = False, progress: bool = True,
              launcher_args=None, force: bool = False) -> int:
    """`gptjax sweep run`: validate every run, compare the runs already there with the file, apply
    the stored plan (each run's mesh and settings; a run it says does not fit is refused), write
    the spec and manifest, run what is not finished."""
    from gptjax.sweeps import plan as plan_lib

    runs = expand(sweep)  # every config is resolved and validated before anything starts
    directory = directory or default_dir(sweep)
    runs, notes = plan_lib.apply(plan_lib.read(directory), runs, force=force)
    for note in notes:
        print(f"plan: {note}", file=sys.stderr)
    current = states(runs, directory)
    stale = [s for s in current if s.status == "stale"]
    if dry_run:
        for s in current:
            mark = {"stale": "stale" if not rerun_changed else "rerun"}.get(s.status, "run " if s.status in (
                "pending", "interrupted") or (retry_failed and s.status == "failed") else "skip")
            print(f"{mark} {s.run.name}: {' '.join(s.run.overrides)}")
        print(f"{len(to_run(runs, directory, retry_failed)) + (len(stale) if rerun_changed else 0)} of {len(runs)} "
              f"runs to run in {directory}" + (f"; {len(stale)} stale" if stale else ""))
        return 0
    if stale and not rerun_changed:
        raise StaleRuns(f"sweep {sweep.name}: {len(stale)} run(s) in {directory} were trained with settings the sweep "
                        f"file no longer describes, so they cannot count as finished or be resumed:\n"
                        f"{stale_text(stale)}\nNothing was started or moved. Rerun them with --rerun-changed (the old "
                        f"runs move to {directory}/{SUPERSEDED}/), or restore the sweep file.")
    archive = archive_dir(directory)
    if stale:
        supersede(directory, stale, archive)
        print(f"moved {len(stale)} stale run(s) to {archive}", file=sys.stderr)
    note = write_spec(directory, sweep, archive)
    if note:
        print(note, file=sys.stderr)
    write_manifest(directory, sweep, runs)
    todo = to_run(runs, directory, retry_failed)
    print(f"{len(todo)} of {len(runs)} runs to run in {directory} ({len(runs) - len(todo)} finished or failed)",
          file=sys.stderr)
    if not todo:
        return 0
    if launcher == "local":
        failed = run_local(sweep, todo, directory, jobs=jobs, progress=progress)
        print(status_text(directory, sweep))
        return 1 if failed else 0
    return _submit(sweep, todo, directory, launcher, launcher_args)


def _submit(sweep: SweepConfig, todo: list[Run], directory: str, launcher: str, args) -> int:
    """The cluster launchers, with one job per run still to do (a job array on SLURM)."""
    from gptjax.launch import BACKENDS
    from gptjax.launch.common import Job

    jobs = [Job(sweep.base, run.overrides, run_dir_of(directory, run)) for run in todo]
    args.array = True  # SLURM: an array even for one run, so logs stay in the sweep directory
    return BACKENDS[launcher].launch(jobs, args)
