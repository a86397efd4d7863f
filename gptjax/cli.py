"""`gptjax` command line: argument parsing only; each verb calls one function of the package."""

from __future__ import annotations

import argparse
import pathlib
import sys

from gptjax.config import SAMPLE


def _params(args) -> int:
    from gptjax.model import counting

    print(counting.format_table(args.presets))
    return 0


def _convert(args) -> int:
    from gptjax.interop import pretrained

    pretrained.convert(args.src, args.dst, to=args.to, merge_lora=args.merge_lora, peft=args.peft)
    print(f"wrote {args.dst} ({args.to} format)")
    return 0


def _train(args) -> int:
    from gptjax.config_files import load_train_config
    from gptjax.runtime import distributed
    from gptjax.training import loop

    cfg = load_train_config(args.config, args.overrides)  # bad input fails before any connection
    distributed.initialize()
    run_dir = args.run_dir or str(pathlib.Path("runs") / cfg.name)
    result = loop.train_run(cfg, run_dir, progress=not args.no_progress)
    val = f", val_loss {result.val_loss:.4f} (step {result.val_step})" if result.val_loss is not None else ""
    import jax

    if jax.process_index() == 0:
        if result.stopped:
            print(f"stopped at step {result.final_step} (checkpoint at {result.checkpoint_step}): {result.stopped}"
                  f"{val}; the same command resumes; run directory {run_dir}")
        else:
            print(f"finished at step {result.final_step}{val}; run directory {run_dir}")
    return 0


def _plan(args) -> int:
    import json
    import os

    from gptjax.config import ConfigError
    from gptjax.config_files import load_train_config

    sizes = _mesh_sizes(args.mesh or "data=1")
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]

    def config(sizes):
        overrides = [*args.overrides, *(f"mesh.{k}={v}" for k, v in sizes.items())]
        if args.batch is not None:
            overrides.append(f"data.batch_size={args.batch}")
        return load_train_config(args.config, overrides)

    cfg = config(sizes)  # bad input fails before jax starts
    if not args.topology:
        # Fake CPU devices of the mesh's size: read when jax creates its CPU client, which nothing
        # before this point has done.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    import jax

    jax.config.update("jax_platforms", "cpu")  # a TPU topology compiles from here too
    from gptjax.tools import plan

    devices = None
    if args.topology:
        devices = plan.tpu_devices(args.topology)
        if args.mesh is None:  # all chips data-parallel
            n = len(devices)
            cfg = config({"data": n, "fsdp": 1, "tensor": 1})
        if n != len(devices):
            raise ConfigError(f"--mesh {args.mesh} spans {n} devices but topology {args.topology} has "
                              f"{len(devices)} chips; give a mesh of {len(devices)}")
    elif jax.device_count() != n:
        raise ConfigError(f"--mesh needs {n} devices but jax started with {jax.device_count()}; run `gptjax plan` "
                          "in a fresh process")
    result = plan.make_plan(cfg, args.accelerator, devices=devices, topology=args.topology)
    print(plan.format_plan(result))
    if args.output:
        from gptjax.store import paths

        paths.write_text(args.output, json.dumps(result.to_dict(), indent=1))
    return 0 if result.fits is not False else 1


def _bench(args) -> int:
    import json

    from gptjax.config_files import load_train_config
    from gptjax.store import paths
    from gptjax.tools import bench

    cfg = load_train_config(args.config, args.overrides)
    sections = tuple(filter(None, args.sections.split(","))) if args.sections else bench.SECTIONS
    opts = bench.BenchOptions(
        sections=sections, repeats=args.repeats, steps=args.steps,
        warmup=args.warmup, depths=tuple(args.depths), prompt=args.prompt, new_tokens=args.new_tokens,
        gen_batch=tuple(args.gen_batch), data_batches=args.data_batches, vs_torch=args.vs_torch or bool(args.nanogpt),
        nanogpt=args.nanogpt, torch_threads=args.torch_threads)  # bad options fail before anything compiles
    result = bench.run(cfg, opts, say=lambda line: print(line, file=sys.stderr))
    print(bench.format_result(result))
    if args.output:
        paths.write_text(args.output, json.dumps(result, indent=1))
    return 0


def _mesh_sizes(text: str) -> dict[str, int]:
    from gptjax.config import ConfigError

    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--mesh {text!r}: expected comma-separated data=N, fsdp=N, tensor=N with N >= 1, "
                              f"got {part!r}")
        sizes[name] = int(value)
    return sizes


def _data_prepare(args) -> int:
    import json
    import time

    from gptjax.config_files import load_train_config
    from gptjax.data import loader
    from gptjax.training import warm_start

    cfg = load_train_config(args.config, args.overrides)
    t0 = time.perf_counter()
    tokens = loader.load_tokens(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    meta_file = tokens.directory / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    rate = f", {meta['mb_per_sec']:.1f} MB/s on {meta['processes']} processes" if meta.get("mb_per_sec") else ""
    print(f"{tokens.directory}: {tokens.train.size:,} train and {tokens.val.size:,} validation tokens "
          f"({tokens.tokenizer.name} tokenizer{rate}; {time.perf_counter() - t0:.1f} s here)")
    return 0


def _finetune(args) -> int:
    import math

    from gptjax.config_files import load_train_config, parse_override
    from gptjax.finetune import task_heads

    # GPT-1's recipe where the command line is silent: batch 32, lr 6.25e-5 with 0.2% linear
    # warmup and linear decay, 3 epochs, λ = 0.5 (section 4.1).
    given = {".".join(parse_override(o)[0]) for o in args.overrides}
    n = len(task_heads.read_examples(args.train, args.task))
    batch = next((parse_override(o)[1] for o in args.overrides if o.startswith("data.batch_size=")), 32)
    steps = next((parse_override(o)[1] for o in args.overrides if o.startswith("steps=")), math.ceil(3 * n / batch))
    defaults = {"data.batch_size": 32, "steps": steps, "optim.lr": 6.25e-5, "optim.min_lr": 0.0,
                "optim.warmup_steps": max(int(0.002 * steps), 1), "optim.schedule": "wsd",
                "optim.wsd_decay_fraction": 1.0,
                "eval_batch_size": 32, "sample_tokens": 0, "checkpoint_every": steps, "log_every": 10}
    overrides = [f"init_from={args.model}", f"finetune.task={args.task}", f"finetune.train_file={args.train}",
                 *([f"finetune.eval_file={args.eval}"] if args.eval else []),
                 *(f"{k}={v}" for k, v in defaults.items() if k not in given), *args.overrides]
    cfg = load_train_config(args.config, overrides)
    result = task_heads.finetune_run(cfg, args.run_dir, progress=not args.no_progress)
    if "stopped" in result:
        print(f"{args.task}: stopped at step {result['steps']}: {result['stopped']}; the same command resumes")
        return 0
    shown = ", ".join(f"{k} {result[k]:.4f}" for k in ("accuracy", "pearson", "spearman") if k in result)
    print(f"{args.task}: {shown or 'no eval file'}; {args.run_dir}/eval.json")
    return 0


def _sample(args) -> int:
    import gptjax
    from gptjax import generation

    model = gptjax.from_pretrained(args.model)  # read-only for run directories
    tokenizer = getattr(model, "tokenizer", None)
    if args.prompt_ids:
        prompts = [[int(t) for t in p.split(",")] for p in args.prompt_ids]
    elif args.prompt:
        prompts = args.prompt
    elif tokenizer is not None:
        prompts = [[tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")]
    else:
        print("gptjax sample: error: this model has no tokenizer; give --prompt-ids", file=sys.stderr)
        return 2
    single = len(prompts) == 1 and args.num_return_sequences == 1
    ids = tokenizer.encode(prompts[0]) if single and isinstance(prompts[0], str) and tokenizer else prompts[0]
    if single and model.cfg.position == "learned" and len(ids) + args.max_new_tokens > model.cfg.max_seq_len:
        # Longer than the learned context: slide the window (generation.sample), as nanoGPT does.
        try:
            new = generation.sample(model, list(ids), args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k or None, top_p=args.top_p, seed=args.seed)
        except ValueError as e:  # sampling options out of range
            print(f"gptjax sample: error: {e}", file=sys.stderr)
            return 2
        print(tokenizer.decode(list(ids) + new) if tokenizer is not None else ",".join(map(str, list(ids) + new)))
        return 0
    streamer = _Streamer(tokenizer, prompts[0]) if single and tokenizer is not None and not args.no_stream else None
    try:
        out = generation.generate(model, prompts, args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size,
                                  num_return_sequences=args.num_return_sequences, stop=args.stop, seed=args.seed,
                                  stream=streamer)
    except ValueError as e:  # sampling options out of range
        print(f"gptjax sample: error: {e}", file=sys.stderr)
        return 2
    if streamer is not None:
        streamer.finish(out[0])
        return 0
    for ids in out:
        print(tokenizer.decode(ids) if tokenizer is not None else ",".join(map(str, ids)))
    return 0


class _Streamer:
    """Prints text as tokens arrive (decoding the whole continuation each time, so characters
    split over tokens come out whole)."""

    def __init__(self, tokenizer, prompt):
        self.tokenizer, self.prompt, self.new, self.printed = tokenizer, prompt, [], ""
        text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        print(text, end="", flush=True)

    def __call__(self, index: int, token: int) -> None:
        self.new.append(token)
        self._show(self.tokenizer.decode(self.new))

    def _show(self, text: str) -> None:
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            print(text[len(self.printed):], end="", flush=True)
            self.printed = text

    def finish(self, ids) -> None:
        start = len(self.prompt) if not isinstance(self.prompt, str) else len(self.tokenizer.encode(self.prompt))
        final = self.tokenizer.decode(ids[start:])  # stop strings may have cut the streamed text
        print(final[len(self.printed):] if final.startswith(self.printed) else "", flush=True)


def _eval(args) -> int:
    import gptjax
    from gptjax.evals import evaluate

    opts = evaluate.EvalOptions(
        task=args.task, data=args.data, shots=args.shots, fewshot_data=args.fewshot_data,
        separator=args.separator.encode().decode("unicode_escape"), seed=args.seed, limit=args.limit,
        stride=args.stride, max_length=args.max_length, batch_size=args.batch_size, samples=args.samples,
        ks=tuple(args.k or (1,)), temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        allow_code_execution=args.allow_code_execution, timeout_s=args.timeout)
    opts.check()  # before loading a model of gigabytes
    model = gptjax.from_pretrained(args.model)  # read-only for run directories
    data = evaluate.report(args.model, model, opts, evaluate.evaluate(model, opts, progress=not args.no_progress))
    print(evaluate.table(data))
    if args.output:
        evaluate.write_report(args.output, data)
    return 0


def _add_eval(sub) -> None:
    from gptjax.evals.evaluate import TASK_NAMES, EvalOptions

    d = EvalOptions(task="perplexity")
    s = sub.add_parser("eval", help="perplexity, multiple choice, LAMBADA and HumanEval, scored as lm-eval does")
    s.add_argument("model", help="run directory (its latest verified checkpoint), gptjax or Hugging Face directory")
    s.add_argument("--task", required=True, help=f"one of: {', '.join(TASK_NAMES)}")
    s.add_argument("--data", help="the benchmark file (see the README for each task's layout and source)")
    s.add_argument("--shots", type=int, default=0, help="few-shot demonstrations per item (0: zero-shot)")
    s.add_argument("--fewshot-data", help="train or dev file the demonstrations are drawn from")
    s.add_argument("--separator", default="\\n\\n", help="between demonstrations (escapes allowed; default \\n\\n)")
    s.add_argument("--seed", type=int, default=d.seed, help="few-shot draws and code sampling")
    s.add_argument("--limit", type=int, help="only the first N items")
    s.add_argument("--stride", type=int, help="perplexity: tokens between window starts (default: half a window)")
    s.add_argument("--max-length", type=int, help="window length (default: the model's max_seq_len)")
    s.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per scoring batch")
    s.add_argument("--samples", type=int, default=d.samples, help="humaneval: completions per problem")
    s.add_argument("--k", type=int, action="append", help="humaneval: pass@k to report (repeatable; default 1)")
    s.add_argument("--temperature", type=float, help="humaneval: default 0 for one sample, 0.8 for more")
    s.add_argument("--top-p", type=float, default=d.top_p, help="humaneval: nucleus sampling's probability mass")
    s.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="humaneval: tokens per completion")
    s.add_argument("--allow-code-execution", action="store_true",
                   help="humaneval: run the generated programs (in a sandbox that is not a security boundary)")
    s.add_argument("--timeout", type=float, default=d.timeout_s, help="humaneval: seconds per program")
    s.add_argument("--output", help="write the report (results, options, model hash, versions) to this JSON file")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_eval, k=None)


def _sweep_run(args) -> int:
    from gptjax.sweeps import runner, spec

    sweep = spec.load_sweep(args.sweep)
    launcher_args = None
    if args.launcher != "local":
        launcher_args = _launcher_args(args.launcher, args.launcher_flags, args.dry_run)
    return runner.run_sweep(sweep, args.run_dir, jobs=args.jobs, launcher=args.launcher, dry_run=args.dry_run,
                            retry_failed=args.retry_failed, rerun_changed=args.rerun_changed,
                            progress=not args.no_progress, launcher_args=launcher_args)


def _launcher_args(name: str, flags: list[str], dry_run: bool):
    """The cluster backend's own flags (those of `gptjax launch NAME`), given after the sweep's."""
    from gptjax.launch import BACKENDS

    p = argparse.ArgumentParser(prog=f"gptjax sweep run --launcher {name}")
    BACKENDS[name].add_arguments(p)
    out = p.parse_args(flags)
    out.dry_run = dry_run
    return out


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
    print(f"wrote {args.dir}/results.csv, report.md, {', '.join(summary['plots']) or 'no plots'} "
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


def _add_sweep(sub) -> None:
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
    r.set_defaults(func=_sweep_run, launcher_flags=[])
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


def _chaos(args) -> int:
    from gptjax.tools import chaos

    return chaos.main(args.workdir, long=args.long, kills=args.kills, terms=args.terms, seed=args.seed)


def _launch(args) -> int:
    from gptjax.launch import BACKENDS
    from gptjax.launch.common import make_jobs

    jobs = make_jobs(args.config, args.overrides, args.run_dir)
    return BACKENDS[args.backend].launch(jobs, args)


def _add_launch(sub) -> None:
    from gptjax.launch import BACKENDS

    s = sub.add_parser("launch", help="run training on a cluster engine (local, slurm, tpu, k8s)")
    backends = s.add_subparsers(dest="backend", required=True)
    for name, module in BACKENDS.items():
        b = backends.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        b.add_argument("config", help="a YAML file (see experiments/) or a preset name")
        b.add_argument("overrides", nargs="*", help="section.field=value applied to every run")
        b.add_argument("--run-dir", help="run directory (local, gs:// or s3://); sweeps: gptjax sweep run --launcher")
        b.add_argument("--dry-run", action="store_true", help="print exactly what would be submitted, and stop")
        module.add_arguments(b)
        b.set_defaults(func=_launch)


def _xla_profile_option(s) -> None:
    s.add_argument("--xla-profile", help="XLA flag profile added to XLA_FLAGS before jax starts: none, gpu "
                   "(the latency-hiding scheduler and pipelined collectives; gptjax/runtime/xla.py); default "
                   "$GPTJAX_XLA_PROFILE or none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptjax", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("params", help="parameter counts and training FLOPs/token of presets")
    s.add_argument("presets", nargs="*", help="preset names (default: all)")
    s.set_defaults(func=_params)

    s = sub.add_parser("convert", help="convert between Hugging Face and gptjax checkpoints")
    s.add_argument("src", help="a Hugging Face directory (safetensors), a gptjax directory or a run directory")
    s.add_argument("dst", help="output directory (must not exist)")
    s.add_argument("--to", choices=["hf", "gptjax"], required=True, help="output format")
    s.add_argument("--merge-lora", action="store_true", help="a LoRA run: its adapters merged into the base "
                   "(what every conversion of a LoRA run writes; the flag says so)")
    s.add_argument("--peft", action="store_true", help="a LoRA run: the adapters alone in PEFT's format "
                   "(adapter_config.json + adapter_model.safetensors; with --to hf)")
    s.set_defaults(func=_convert)

    s = sub.add_parser("train", help="train (or resume) a model")
    s.add_argument("config", help="a YAML file (see experiments/) or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value with YAML values, e.g. optim.lr=3e-4")
    s.add_argument("--run-dir", help="run directory (default: runs/<config name>; resumes if it has checkpoints)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _xla_profile_option(s)
    s.set_defaults(func=_train)

    s = sub.add_parser("finetune", help="GPT-1's task fine-tuning: a linear head on the extract token, with the "
                       "auxiliary language-model loss (finetune.aux_lm_weight)")
    s.add_argument("model", help="a run directory, a gptjax or a Hugging Face directory (init_from)")
    s.add_argument("--task", required=True, choices=["classification", "entailment", "similarity", "multiple_choice"],
                   help="the task's input layout and head")
    s.add_argument("--train", required=True, help="JSONL training examples")
    s.add_argument("--eval", help="JSONL examples scored at the end into RUN_DIR/eval.json")
    s.add_argument("--run-dir", required=True, help="run directory (resumes if it has checkpoints)")
    s.add_argument("--config", help="a YAML file with other sections (optim, data, mesh, ...); default: their defaults")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. finetune.aux_lm_weight=0 steps=300")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _xla_profile_option(s)
    s.set_defaults(func=_finetune)

    s = sub.add_parser("plan", help="compile the sharded train step ahead of time on fake devices of a mesh and "
                       "report per-device memory, and whether it fits an accelerator")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. model.remat=full data.seq_len=2048")
    s.add_argument("--mesh", help="data=N,fsdp=N,tensor=N (missing axes are 1; default data=1, or data=CHIPS "
                   "with --topology)")
    s.add_argument("--topology", help="compile for a TPU slice such as v5e:2x4, v5p:2x2x1, v6e:2x2 with the TPU "
                   "compiler (needs libtpu; runs on a CPU machine) instead of fake CPU devices")
    s.add_argument("--batch", type=int, help="global batch size (data.batch_size)")
    s.add_argument("--accelerator", help="check the plan against its memory: h100, h200, b200, a100-40gb, "
                   "a100-80gb, l40s, l4, a10g, v100-32gb, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e")
    s.add_argument("--output", help="also write the plan as JSON here")
    s.set_defaults(func=_plan)

    s = sub.add_parser("bench", help="train-step time, tokens/s and MFU, compile times, memory, generation and "
                       "data-loader speed of a config; --vs-torch runs the same model in PyTorch alongside")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. data.batch_size=8")
    s.add_argument("--sections", help="comma-separated subset of train,compile,memory,generate,data (default: all)")
    s.add_argument("--repeats", type=int, default=5, help="timed blocks per measurement (the median is reported)")
    s.add_argument("--steps", type=int, default=10, help="train steps per timed block")
    s.add_argument("--warmup", type=int, default=3, help="untimed train steps first")
    s.add_argument("--depths", type=int, nargs="+", default=[], help="compile-time depths (default: the "
                   "config's and 4x it)")
    s.add_argument("--prompt", type=int, default=32, help="generation: prompt tokens")
    s.add_argument("--new-tokens", type=int, default=32, help="generation: new tokens")
    s.add_argument("--gen-batch", type=int, nargs="+", default=[1, 8], help="generation batch sizes")
    s.add_argument("--data-batches", type=int, default=200, help="batches per data-loader measurement")
    s.add_argument("--vs-torch", action="store_true", help="also time the same model and optimizer in PyTorch "
                   "(transformers' class for the config), interleaved with gptjax")
    s.add_argument("--nanogpt", help="a nanoGPT checkout: its model.py is the PyTorch side (implies --vs-torch)")
    s.add_argument("--torch-threads", type=int, help="PyTorch threads (default: every core, as XLA:CPU uses)")
    s.add_argument("--output", help="also write the results as JSON here")
    _xla_profile_option(s)
    s.set_defaults(func=_bench)

    s = sub.add_parser("data", help="prepare token files")
    data_sub = s.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("prepare", help="tokenize a config's data (data.text_files or data.corpus) into the "
                            "token cache, in parallel, so training starts at once")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. data.text_files=[owt/*.jsonl]")
    s.set_defaults(func=_data_prepare)

    s = sub.add_parser("sample", help="generate from a run directory, a gptjax or a Hugging Face directory")
    s.add_argument("model", help="run directory (its latest verified checkpoint), gptjax or Hugging Face directory")
    s.add_argument("--prompt", action="append", default=[], help="text to continue (repeat for a batch; "
                   "default: end-of-text or a newline)")
    s.add_argument("--prompt-ids", action="append", default=[], help="token ids to continue, comma-separated")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per prompt")
    s.add_argument("--temperature", type=float, default=SAMPLE.temperature, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=SAMPLE.top_k, help="sample among the k most likely tokens (0: all)")
    s.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of tokens with this "
                   "probability (default: all)")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="divide the logits of tokens already seen "
                   "(Keskar et al.; 1 is none)")
    s.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size (0: off)")
    s.add_argument("--num-return-sequences", type=int, default=1, help="samples per prompt")
    s.add_argument("--stop", action="append", default=[], help="stop after this string (repeatable)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    s.set_defaults(func=_sample)

    _add_eval(sub)
    sub.add_parser("lm-eval", help="lm-evaluation-harness's own command line with the gptjax model registered "
                   "(--model gptjax --model_args path=DIR)", add_help=False)

    s = sub.add_parser("chaos", help="fault injection: break a small job at random points, resume, check nothing was lost")
    s.add_argument("--workdir", default="runs/chaos", help="where the runs go (default: runs/chaos)")
    s.add_argument("--long", action="store_true", help="add --kills random SIGKILLs and --terms random SIGTERMs")
    s.add_argument("--kills", type=int, default=20, help="--long: random SIGKILLs")
    s.add_argument("--terms", type=int, default=10, help="--long: random SIGTERMs")
    s.add_argument("--seed", type=int, default=0, help="--long: seed of the random moments")
    s.set_defaults(func=_chaos)

    _add_launch(sub)
    _add_sweep(sub)
    for parser in _parsers(p):
        parser.formatter_class = _Help
    return p


class _Help(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if not action.option_strings or default is None or default is False or default == [] \
                or default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every subcommand's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def _version() -> str:
    from importlib import metadata

    return f"gptjax {metadata.version('gptjax')}"


def _apply_xla_profile(args) -> None:
    """XLA_FLAGS are read when jax starts its backend, which no command has done yet."""
    import os

    from gptjax.runtime import xla

    profile = getattr(args, "xla_profile", None) or os.environ.get("GPTJAX_XLA_PROFILE") or "none"
    xla.apply_profile(profile)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # every argument belongs to the harness
        from gptjax import harness

        return harness.main(argv[1:])
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --run-dir d steps=10`), which argparse's
    # positional handling does not allow with subcommands; collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and getattr(args, "sweep_command", None) in ("run", "search") \
            and args.launcher != "local":
        args.launcher_flags = extra  # the cluster backend's flags
    elif extra:
        takes_overrides = args.command in ("train", "launch", "data", "finetune", "plan", "bench") \
            or getattr(args, "sweep_command", None) == "coord-check"
        if not takes_overrides or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from gptjax import errors
    from gptjax.config import ConfigError
    from gptjax.data.loader import DataError
    from gptjax.data.tokenizer import TokenizerError
    from gptjax.evals import EvalError
    from gptjax.store.paths import StorageError
    from gptjax.store.tensor_files import CheckpointError

    _one_line_background_errors()
    _persistent_compilation_cache()
    try:
        _apply_xla_profile(args)
        return args.func(args)
    except (ConfigError, DataError, TokenizerError, CheckpointError, StorageError, FileNotFoundError,
            EvalError) as e:
        print(f"gptjax {args.command}: error: {e}", file=sys.stderr)
        return errors.EXIT_REFUSED
    except errors.RunStopped as e:
        print(f"gptjax {args.command}: stopped: {e}", file=sys.stderr)
        return errors.EXIT_STOPPED
    except OSError as e:  # a full disk, a lost connection: the last checkpoint is intact
        print(f"gptjax {args.command}: stopped: {e}", file=sys.stderr)
        return errors.EXIT_STOPPED


def _persistent_compilation_cache() -> None:
    """Compiled steps are kept in GPTJAX_CACHE_DIR/jax (unless JAX_COMPILATION_CACHE_DIR says
    otherwise): a resumed or repeated run skips compilation (14 s -> 7 s for a tiny run here)."""
    import jax

    from gptjax.store import paths

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(paths.cache_root() / "jax"))


def _one_line_background_errors() -> None:
    """Failures in library threads (Orbax's writers, TensorBoard's) as one line each: the
    command reports what happened itself, and a wall of tracebacks would bury it."""
    import logging
    import threading

    class OneLine(logging.Filter):
        def filter(self, record):
            if record.exc_info:
                record.msg = f"{record.getMessage()} ({record.exc_info[0].__name__}: {record.exc_info[1]})"
                record.args, record.exc_info, record.exc_text = None, None, None
            return True

    logging.getLogger("absl").addFilter(OneLine())
    threading.excepthook = lambda a: print(f"WARNING: {a.thread.name if a.thread else 'a thread'}: "
                                           f"{a.exc_type.__name__}: {a.exc_value}", file=sys.stderr)
    sys.unraisablehook = lambda u: print(f"WARNING: {u.exc_type.__name__}: {u.exc_value}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
