"""`gptjax sweep`: plan, run, status, analyze, fit, eval, search, coord-check (and the hidden search-worker)."""

from __future__ import annotations

import argparse
import sys


def _sweep_run(args) -> int:
    from gptjax.sweeps import runner, spec

    sweep = spec.load_sweep(args.sweep)
    launcher_args = None
    if args.launcher != "local":
        launcher_args = _launcher_args(args.launcher, args.launcher_flags, args.dry_run)
    return runner.run_sweep(sweep, args.run_dir, jobs=args.jobs, launcher=args.launcher, dry_run=args.dry_run,
                            retry_failed=args.retry_failed, rerun_changed=args.rerun_changed,
                            progress=not args.no_progress, launcher_args=launcher_args, force=args.force)


def _sweep_plan(args) -> int:
    import json
    import os

    from gptjax.config import ConfigError
    from gptjax.sweeps import runner, spec
    from gptjax.tools.commands import mesh_sizes

    given = [name for name in ("topology", "accelerator", "mesh") if getattr(args, name)]
    if args.topology and (args.accelerator or args.mesh or args.devices):
        raise ConfigError("--topology names the devices and their memory: give it alone")
    if args.accelerator and not (args.devices or args.mesh):
        raise ConfigError(f"--accelerator {args.accelerator}: say how many with --devices N (or give --mesh)")
    if not given:
        raise ConfigError("give the target: --topology v5e:2x4, --accelerator h100 --devices 8, or --mesh data=..,fsdp=..")
    from gptjax.sweeps import plan as plan_lib

    mesh = None
    if args.mesh:
        sizes = mesh_sizes(args.mesh)
        from gptjax.config import MeshConfig

        mesh = MeshConfig(**sizes)
    target_accel = plan_lib.tpu_accelerator(args.topology) if args.topology else (
        plan_lib.accelerator(args.accelerator) if args.accelerator else None)
    n = args.devices or (mesh.data * mesh.fsdp * mesh.tensor if mesh else 0)
    if mesh is not None and args.devices and args.devices != mesh.data * mesh.fsdp * mesh.tensor:
        raise ConfigError(f"--mesh {args.mesh} spans {mesh.data * mesh.fsdp * mesh.tensor} devices, not --devices "
                          f"{args.devices}")
    if not args.topology:
        # Fake CPU devices of the target's count, read when jax creates its CPU client (nothing has yet).
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    sweep = spec.load_sweep(args.sweep)
    runs = spec.expand(sweep)
    import jax

    jax.config.update("jax_platforms", "cpu")
    devices = None
    if args.topology:
        from gptjax.tools import plan as tools_plan

        devices = tools_plan.tpu_devices(args.topology)
        n = len(devices)
    memory = None
    if target_accel is None:  # this machine's CPU devices: each one's share of its memory
        from gptjax.runtime import hardware

        memory = hardware.device_capacity(jax.devices()[0])
    what = (f"TPU {args.topology} ({n} chips, {target_accel.memory} each)" if args.topology else
            f"{n} x {target_accel.name} {target_accel.memory} (compiled for CPU devices: temporaries are an estimate)"
            if target_accel else f"{n} CPU device(s) of this machine ({(memory or 0) / 2**30:.1f} GiB each)")
    target = plan_lib.Target(what, n, target_accel, args.topology, mesh, memory)
    plan = plan_lib.plan_sweep(runs, target, devices, mfu=args.mfu)
    print(plan_lib.table(plan))
    directory = args.run_dir or runner.default_dir(sweep)
    plan_lib.save(directory, plan)
    print(f"plan written to {directory}/{plan_lib.PLAN} and plan.csv; `gptjax sweep run` uses its meshes and settings",
          file=sys.stderr)
    if args.output:
        from gptjax.store import paths

        paths.write_text(args.output, json.dumps(plan, indent=1, default=str))
    return 0


def _sweep_status(args) -> int:
    from gptjax.sweeps import runner, spec

    print(runner.status_text(args.dir, spec.load_sweep(args.sweep) if args.sweep else None))
    return 0


def _sweep_analyze(args) -> int:
    from gptjax.sweeps import report

    summary = report.analyze(args.dir, holdout_largest=args.holdout_largest, bootstrap=args.bootstrap,
                             metric=args.metric, force=args.force)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.dir}/report.html, results.csv, report.md, {', '.join(summary['plots']) or 'no plots'} "
          f"({len(summary['warnings'])} warning(s), at the top of report.md)")
    return 0


def _sweep_fit(args) -> int:
    from gptjax.sweeps import fit

    print(fit.fit_command(args.csv, law=args.law, exclude_worst=args.exclude_worst, bootstrap=args.bootstrap,
                          holdout_largest=args.holdout_largest, as_json=args.json, seed=args.seed,
                          metric=args.metric, force=args.force))
    return 0


def _sweep_eval(args) -> int:
    from gptjax.sweeps import evaluation

    return evaluation.main(args.dir, args.set, args.task, args.force)


def _sweep_search(args) -> int:
    import json

    from gptjax.sweeps import runner, search, spec

    sweep = spec.load_sweep(args.sweep)
    directory = args.run_dir or runner.default_dir(sweep)
    launcher_args = _launcher_args(args.launcher, args.launcher_flags, False) if args.launcher != "local" else None
    out = search.search(args.sweep, sweep, directory, workers=args.workers, launcher=args.launcher,
                        launcher_args=launcher_args)
    if isinstance(out, dict):
        print(json.dumps(out, indent=1))
        return 0
    return out


def _sweep_search_worker(args) -> int:
    from gptjax.sweeps import search, spec

    sweep = spec.load_sweep(args.sweep)
    search.work(sweep, args.run_dir, args.trials or sweep.search.trials)
    return 0


def _sweep_coord_check(args) -> int:
    from gptjax.config_files import load_train_config
    from gptjax.sweeps import mup

    cfg = load_train_config(args.config, args.overrides)
    widths = [int(w) for w in args.widths.split(",")]
    summary = mup.run(cfg, widths, args.steps, args.png)
    if args.json:
        print(mup.to_json(summary))
    else:
        for p, g in summary["growth"].items():
            print(f"{p}: slope of log mean|x| vs log width at step {args.steps}: "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in g.items()))
        print(f"wrote {args.png}")
    return 0


def _launcher_args(name: str, flags: list[str], dry_run: bool):
    """The cluster backend's own flags (those of `gptjax launch NAME`), given after the sweep's."""
    from gptjax.launch import BACKENDS

    p = argparse.ArgumentParser(prog=f"gptjax sweep run --launcher {name}")
    BACKENDS[name].add_arguments(p)
    out = p.parse_args(flags)
    out.dry_run = dry_run
    return out


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
    s = sub.add_parser("sweep", help="scaling-law sweeps: run, status, analyze, fit, search, coord-check")
    verbs = s.add_subparsers(dest="sweep_command", required=True)
    r = verbs.add_parser("run", help="run (or resume) every run of a sweep file that is not finished")
    r.add_argument("sweep", help="a sweep file (see experiments/sweeps/)")
    r.add_argument("--run-dir", help="sweep directory (default: runs/sweeps/<name>); gs:// and s3:// work")
    r.add_argument("--jobs", type=int, default=1, help="runs at once on this machine, each on its share of it")
    r.add_argument("--launcher", choices=["local", "slurm", "tpu", "k8s"], default="local",
                   help="where the runs go; cluster flags (those of `gptjax launch NAME`) follow the sweep's")
    r.add_argument("--dry-run", action="store_true", help="list the runs and what would run, and stop")
    r.add_argument("--retry-failed", action="store_true", help="run failed runs again too")
    r.add_argument("--rerun-changed", action="store_true", help="runs trained with settings the sweep file no longer "
                   "describes (stale) move to DIR/superseded/ and train anew; without it such runs stop the command")
    r.add_argument("--no-progress", action="store_true", help="no progress bars; plain lines")
    r.add_argument("--force", action="store_true", help="run even the runs the stored plan (plan.json) says do not fit")
    r.set_defaults(func=_sweep_run, launcher_flags=[])
    p = verbs.add_parser("plan", help="every run's parameters, FLOPs, mesh, per-device memory (compiled), fit and "
                         "cost on a target, before anything is submitted; stored as DIR/plan.json")
    p.add_argument("sweep", help="a sweep file")
    p.add_argument("--topology", help="a TPU slice such as v5e:2x4, compiled for with the TPU compiler (libtpu)")
    p.add_argument("--accelerator", help="a device kind with a known memory: h100, h200, b200, a100-80gb, tpu-v5e, ...")
    p.add_argument("--devices", type=int, help="with --accelerator: how many")
    p.add_argument("--mesh", help="data=N,fsdp=N,tensor=N for every run (default: chosen per run)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation the cost assumes")
    p.add_argument("--output", help="also write the plan's JSON here")
    p.add_argument("--run-dir", help="sweep directory where plan.json goes (default: runs/sweeps/<name>)")
    p.set_defaults(func=_sweep_plan)
    t = verbs.add_parser("status", help="counts of finished, failed, interrupted, pending and stale runs")
    t.add_argument("dir", help="a sweep directory")
    t.add_argument("sweep", nargs="?", help="compare the runs with this sweep file (default: DIR/sweep.yaml)")
    t.set_defaults(func=_sweep_status)
    a = verbs.add_parser("analyze", help="results.csv, fitted laws with their warnings, ablation statistics, plots, "
                         "report.md")
    a.add_argument("dir", help="a sweep directory")
    a.add_argument("--holdout-largest", type=int, default=1, help="extrapolation check: fit without the K largest")
    a.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the fits' intervals")
    a.add_argument("--metric", default="val_loss", help="what the laws fit: val_loss (default), best_val_loss or any "
                   "recorded eval metric such as eval/gutenberg/bpb")
    a.add_argument("--force", action="store_true", help="fit approach 3 even with fewer than 3 points per parameter")
    a.set_defaults(func=_sweep_analyze)
    f = verbs.add_parser("fit", help="fit a scaling law to a CSV (params, tokens or flops, loss)")
    f.add_argument("csv", help="a CSV with params, tokens or flops, and loss columns (results.csv of analyze)")
    f.add_argument("--law", choices=["chinchilla", "power"], default="chinchilla",
                   help="chinchilla: L(N, D) on every row; power: L(N) on the best row per size (as analyze)")
    f.add_argument("--exclude-worst", type=int, default=0, help="refit without the K points of largest residual")
    f.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals (0: none)")
    f.add_argument("--holdout-largest", type=int, default=0, help="extrapolation check: fit without the K largest")
    f.add_argument("--json", action="store_true", help="one JSON object (with `warnings` and `diagnostics`)")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    f.add_argument("--metric", default="loss", help="the CSV column fitted as the loss (default: loss)")
    f.add_argument("--force", action="store_true", help="fit approach 3 even with fewer than 3 points per parameter")
    f.set_defaults(func=_sweep_fit)
    e = verbs.add_parser("eval", help="measure held-out sets and tasks on every finished run's final checkpoint and "
                         "add them to its result.json (no retraining)")
    e.add_argument("dir", help="a sweep directory")
    e.add_argument("--set", action="append", default=[], help="NAME=FILE: a held-out .txt, .jsonl or .bin file "
                   "(loss and bits per byte, as eval.sets); repeatable")
    e.add_argument("--task", action="append", default=[], help="TASK=FILE[,shots=K,limit=N,fewshot=FILE,name=NAME]: "
                   "a task of `gptjax eval` (as eval.tasks); repeatable")
    e.add_argument("--force", action="store_true", help="measure again runs that have the metric already")
    e.set_defaults(func=_sweep_eval)
    q = verbs.add_parser("search", help="Optuna search (TPE, pruning) over a sweep file's 'search' section")
    q.add_argument("sweep", help="a sweep file with a 'search' section")
    q.add_argument("--run-dir", help="sweep directory (default: runs/sweeps/<name>)")
    q.add_argument("--workers", type=int, default=1, help="workers sharing the study")
    q.add_argument("--launcher", choices=["local", "slurm", "tpu", "k8s"], default="local",
                   help="where the workers run")
    q.set_defaults(func=_sweep_search, launcher_flags=[])
    c = verbs.add_parser("coord-check", help="μP coordinate check: activation scales against width, both parametrizations")
    c.add_argument("config", help="a YAML file or preset (its depth, head size, optimizer and data are used)")
    c.add_argument("overrides", nargs="*", help="section.field=value")
    c.add_argument("--widths", default="64,128,256,512", help="d_model values, comma-separated")
    c.add_argument("--steps", type=int, default=10, help="training steps per width")
    c.add_argument("--png", default="coord_check.png", help="where the plot goes")
    c.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    c.set_defaults(func=_sweep_coord_check)
    # Internal (what `sweep search` starts): no help, so it stays out of the listing.
    w = verbs.add_parser("search-worker", description="one worker of a search whose study exists")
    w.add_argument("sweep", help="the search's sweep file")
    w.add_argument("--run-dir", required=True, help="the search's sweep directory")
    w.add_argument("--trials", type=int, default=0, help="at most this many trials (default: the study's total)")
    w.set_defaults(func=_sweep_search_worker)
    verbs.metavar = "{" + ",".join(name for name in verbs.choices if name != "search-worker") + "}"
