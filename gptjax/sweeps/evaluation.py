"""`gptjax sweep eval DIR`: held-out sets and benchmark tasks measured on the final checkpoint of
every finished run of a study, without retraining, and added to each run's result.json under
`evals` (marked `added_by`), where `sweep analyze --metric eval/NAME/METRIC` finds them.

Each run is measured exactly as training measures it (heldout.py: the same windows, token weights
and bits per byte), on one device. A run whose result already holds the metric at its final step
is skipped unless forced, so the command resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from flax import nnx

from gptjax.config import ConfigError, EvalConfig, EvalTask, MeshConfig
from gptjax.interop import runs
from gptjax.runtime import sharding
from gptjax.store import paths, rundir
from gptjax.sweeps.runner import RESULT, read_result, statuses
from gptjax.training import heldout, trainer


def eval_sweep(directory: str, sets: dict[str, str], tasks: tuple[EvalTask, ...], *, force: bool = False,
               say=print) -> dict[str, list[str]]:
    """Measure `sets` and `tasks` on every finished run; returns run names by what happened."""
    if not sets and not tasks:
        raise ConfigError("gptjax sweep eval: nothing to measure; give --set NAME=FILE and/or --task TASK=FILE")
    wanted = EvalConfig(sets=dict(sets), tasks=tuple(tasks))  # validated: names, options
    names = [*wanted.sets, *(t.metric_name for t in wanted.tasks)]
    done: dict[str, list[str]] = {"measured": [], "already": [], "skipped": []}
    for entry in statuses(directory):
        if entry["status"] != "finished":
            done["skipped"].append(entry["name"])
            say(f"{entry['name']}: {entry['status']}, not measured")
            continue
        result = read_result(entry["run_dir"]) or {}
        evals = result.get("evals") or {}
        if not force and all(evals.get(n, {}).get("step") == result.get("steps") for n in names):
            done["already"].append(entry["name"])
            continue
        measured, step = measure_run(entry["run_dir"], wanted)
        for name in names:
            metrics = {k.split("/")[2]: v for k, v in measured.items() if k.split("/")[1] == name}
            evals[name] = {"step": step, **metrics, "added_by": "gptjax sweep eval"}
        paths.write_text(paths.as_path(entry["run_dir"]) / RESULT,
                           json.dumps({**result, "evals": evals}, indent=1, default=str))
        done["measured"].append(entry["name"])
        say(f"{entry['name']}: " + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()))
    return done


def measure_run(run_dir: str, wanted: EvalConfig) -> tuple[dict[str, float], int]:
    """({eval/NAME/METRIC: value}, step) of a run's newest checkpoint, opened read-only."""
    cfg = rundir.RunDir(run_dir, read_only=True).read_config()
    model, tokenizer, step = runs.load_model(run_dir)  # LoRA adapters come merged into their base
    cfg = dataclasses.replace(cfg, eval=wanted, mesh=MeshConfig(data=1, fsdp=1, tensor=1),
                              finetune=dataclasses.replace(cfg.finetune, lora=None))
    tr = trainer.make_trainer(cfg, sharding.one_device_mesh(cfg.mesh))
    params = nnx.to_pure_dict(nnx.state(model))
    measured = heldout.HeldOut(cfg, tr, None, tokenizer).measure(params, None, tasks=True, interrupted=lambda: False)
    return measured, step


def main(directory: str, sets: list[str], tasks: list[str], force: bool) -> int:
    """The command line's side: --set NAME=FILE and --task TASK=FILE[,shots=K,limit=N,fewshot=F]."""
    from gptjax.config_files import resolve_path

    parsed_sets = {}
    for text in sets:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--set {text!r}: expected NAME=FILE (a .txt, .jsonl or .bin held-out file)")
        parsed_sets[name] = resolve_path(path, None, "--set")
    done = eval_sweep(directory, parsed_sets, tuple(_task(t) for t in tasks), force=force,
                      say=lambda line: print(line, file=sys.stderr))
    print(f"{directory}: measured {len(done['measured'])} run(s), {len(done['already'])} already had the metric(s), "
          f"{len(done['skipped'])} not finished")
    return 0


def _task(text: str) -> EvalTask:
    from gptjax.config_files import resolve_path

    head, *options = text.split(",")
    task, sep, path = head.partition("=")
    if not sep or not task or not path:
        raise ConfigError(f"--task {text!r}: expected TASK=FILE[,shots=K,limit=N,fewshot=FILE,name=NAME]")
    fields = {"task": task, "data": resolve_path(path, None, "--task")}
    for option in options:
        key, _, value = option.partition("=")
        key = {"fewshot": "fewshot_data"}.get(key, key)
        if key not in ("shots", "limit", "fewshot_data", "name") or not value:
            raise ConfigError(f"--task {text!r}: option {option!r} is not one of shots=K, limit=N, fewshot=FILE, "
                              "name=NAME")
        fields[key] = int(value) if key in ("shots", "limit") and value.isdigit() else (
            resolve_path(value, None, "--task") if key == "fewshot_data" else value)
    return EvalTask(**fields)
