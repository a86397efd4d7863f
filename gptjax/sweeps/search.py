"""Hyperparameter search with Optuna: TPE sampling, median pruning of poor runs from their logged
validation losses, and a study several workers share (processes here, SLURM array tasks there).

The study lives in Optuna's storage: SQLite by default (`<sweep dir>/optuna.db`), any RDB URL
(`postgresql://...`), or a journal file (`journal:/shared/path/study.log`) for workers on a shared
disk without a database. Several workers opening a fresh SQLite file at once race while creating
its tables (seen with Optuna 5.0: "table studies already exists"), so the study is created once,
before any worker starts, and workers only load it.

Each trial is one training run in `<sweep dir>/trial-NNNN`, reporting its validation loss at
each eval; a pruned trial stops there (its result.json says "pruned").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gptjax.config import ConfigError
from gptjax.config_files import load_train_config
from gptjax.store import paths
from gptjax.sweeps.spec import Distribution, SweepConfig, _as_override


def storage_url(sweep: SweepConfig, directory: str) -> str:
    if sweep.search.storage:
        return sweep.search.storage
    if paths.is_remote(directory):
        raise ConfigError(f"search.storage must be set for a sweep directory on object storage ({directory}): SQLite "
                          "needs a local file; give an RDB URL or journal:/shared/path")
    return f"sqlite:///{os.path.abspath(directory)}/optuna.db"


def _storage(url: str):

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


def create_study(sweep: SweepConfig, directory: str):
    """Create (or open) the study, before any worker starts."""
    import optuna

    if sweep.search is None:
        raise ConfigError(f"sweep {sweep.name} has no 'search' section (params, trials, ...)")
    if not paths.is_remote(directory):
        os.makedirs(directory, exist_ok=True)
    search = sweep.search
    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials) if search.pruning \
        else optuna.pruners.NopPruner()
    return optuna.create_study(study_name=sweep.name, storage=_storage(storage_url(sweep, directory)),
                               sampler=sampler, pruner=pruner, direction="minimize", load_if_exists=True)


def _suggest(trial, key: str, d: Distribution):
    if d.distribution == "choice":
        return trial.suggest_categorical(key, d.values)
    if d.distribution == "int_uniform":
        return trial.suggest_int(key, int(d.low), int(d.high))
    return trial.suggest_float(key, d.low, d.high, log=d.distribution == "log_uniform")


def objective(sweep: SweepConfig, directory: str):
    """One trial: a training run with the suggested values, pruned from its eval losses."""
    import optuna

    from gptjax.training import loop

    def trial_fn(trial):
        values = {**sweep.overrides, **{k: _suggest(trial, k, d) for k, d in sweep.search.params.items()},
                  "seed": sweep.seeds[0]}
        cfg = load_train_config(sweep.base, [_as_override(k, v) for k, v in values.items()])
        run_dir = f"{directory.rstrip('/')}/trial-{trial.number:04d}"

        def report(step: int, val_loss: float) -> None:
            trial.report(val_loss, step)
            if trial.should_prune():
                paths.write_text(paths.as_path(run_dir) / "result.json",
                                   json.dumps({"status": "pruned", "step": step, "val_loss": val_loss}))
                raise optuna.TrialPruned(f"pruned at step {step} (val_loss {val_loss:.4f})")

        result = loop.train_run(cfg, run_dir, progress=False, on_eval=report)
        return result.val_loss

    return trial_fn


def work(sweep: SweepConfig, directory: str, trials: int) -> None:
    """A worker: run trials of the shared study until the study holds `sweep.search.trials`."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=sweep.name, storage=_storage(storage_url(sweep, directory)),
                              sampler=optuna.samplers.TPESampler(seed=None, n_startup_trials=sweep.search.startup_trials),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=sweep.search.startup_trials)
                              if sweep.search.pruning else optuna.pruners.NopPruner())
    callback = optuna.study.MaxTrialsCallback(sweep.search.trials, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                            TrialState.FAIL))
    study.optimize(objective(sweep, directory), n_trials=trials, callbacks=[callback],
                   catch=(FloatingPointError,))


def search(sweep_path: str, sweep: SweepConfig, directory: str, *, workers: int = 1, launcher: str = "local",
           launcher_args=None) -> dict | int:
    """Create the study, then start `workers` workers: local processes (each on its share of the
    CPU cores or a GPU), waited for and summarised; or SLURM array tasks (submitted)."""
    from gptjax.sweeps.runner import device_shares

    study = create_study(sweep, directory)
    if launcher != "local":
        from gptjax.launch import BACKENDS
        from gptjax.launch.common import Job

        jobs = [Job(sweep_path, (), f"{directory.rstrip('/')}/worker-{i}",
                    command=("sweep", "search-worker", sweep_path, "--run-dir", directory)) for i in range(workers)]
        return BACKENDS[launcher].launch(jobs, launcher_args)
    shares = device_shares(workers)
    logs = os.path.join(directory, "logs")
    os.makedirs(logs, exist_ok=True)
    procs = []
    for i, share in enumerate(shares):
        cpus = share["cpus"]
        cmd = [sys.executable, "-m", "gptjax.cli", "sweep", "search-worker", sweep_path, "--run-dir", directory]
        log = open(os.path.join(logs, f"worker-{i}.log"), "w")
        procs.append(subprocess.Popen(cmd, env={**os.environ, **share["env"]}, stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"search workers exited with {codes}; see {logs}/")
    return summary(study)


def summary(study) -> dict:
    from optuna.trial import TrialState

    states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState}
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in study.trials) else None
    return {"study": study.study_name, "trials": len(study.trials), "states": {k: v for k, v in states.items() if v},
            "best_value": best.value if best else None, "best_params": best.params if best else None,
            "best_trial": best.number if best else None}


