"""`gptjax` command line: argument parsing only; each verb calls one function of the package."""

from __future__ import annotations

import argparse
import pathlib
import sys


def _params(args) -> int:
    from gptjax import counting

    print(counting.format_table(args.presets))
    return 0


def _convert(args) -> int:
    from gptjax import pretrained

    pretrained.convert(args.src, args.dst, to=args.to)
    print(f"wrote {args.dst} ({args.to} format)")
    return 0


def _train(args) -> int:
    from gptjax import distributed, run
    from gptjax.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # bad input fails before any connection
    distributed.initialize()
    run_dir = args.run_dir or str(pathlib.Path("runs") / cfg.name)
    result = run.train_run(cfg, run_dir, progress=not args.no_progress)
    val = f", val_loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    import jax

    if jax.process_index() == 0:
        print(f"finished at step {result.final_step}{val}; run directory {run_dir}")
    return 0


def _sample(args) -> int:
    from gptjax import generate, rundir

    model, tokenizer, _ = rundir.load_model(args.run_dir)
    prompt = tokenizer.encode(args.prompt) if args.prompt else (
        [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n"))
    try:
        ids = generate.sample(model, prompt, args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:  # sampling options out of range
        print(f"gptjax sample: error: {e}", file=sys.stderr)
        return 2
    print(args.prompt + tokenizer.decode(ids))
    return 0


def _chaos(args) -> int:
    from gptjax import chaos

    return chaos.main(args.workdir, long=args.long, kills=args.kills, terms=args.terms, seed=args.seed)


def _launch(args) -> int:
    from gptjax.launch import BACKENDS
    from gptjax.launch.common import make_jobs

    jobs = make_jobs(args.config, args.overrides, args.run_dir, args.sweep)
    return BACKENDS[args.backend].launch(jobs, args)


def _add_launch(sub) -> None:
    from gptjax.launch import BACKENDS

    s = sub.add_parser("launch", help="run training on a cluster engine (local, slurm, tpu, k8s)")
    backends = s.add_subparsers(dest="backend", required=True)
    for name, module in BACKENDS.items():
        b = backends.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        b.add_argument("config", help="a YAML file (see experiments/) or a preset name")
        b.add_argument("overrides", nargs="*", help="section.field=value applied to every run")
        b.add_argument("--run-dir", help="run directory (sweeps: one numbered subdirectory per run)")
        b.add_argument("--sweep", help="YAML list of override sets: one run each (a job array on SLURM)")
        b.add_argument("--dry-run", action="store_true", help="print exactly what would be submitted, and stop")
        module.add_arguments(b)
        b.set_defaults(func=_launch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptjax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("params", help="parameter counts and training FLOPs/token of presets")
    s.add_argument("presets", nargs="*", help="preset names (default: all)")
    s.set_defaults(func=_params)

    s = sub.add_parser("convert", help="convert between Hugging Face and gptjax checkpoints")
    s.add_argument("src", help="a Hugging Face directory (safetensors), a gptjax directory or a run directory")
    s.add_argument("dst", help="output directory (must not exist)")
    s.add_argument("--to", choices=["hf", "gptjax"], required=True, help="output format")
    s.set_defaults(func=_convert)

    s = sub.add_parser("train", help="train (or resume) a model")
    s.add_argument("config", help="a YAML file (see experiments/) or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value with YAML values, e.g. optim.lr=3e-4")
    s.add_argument("--run-dir", help="run directory (default: runs/<config name>; resumes if it has checkpoints)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_train)

    s = sub.add_parser("sample", help="sample a continuation from a run's latest checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--prompt", default="", help="text to continue (default: end-of-text or a newline)")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)

    s = sub.add_parser("chaos", help="fault injection: break a small job at random points, resume, check nothing was lost")
    s.add_argument("--workdir", default="runs/chaos", help="where the runs go (default: runs/chaos)")
    s.add_argument("--long", action="store_true", help="add --kills random SIGKILLs and --terms random SIGTERMs")
    s.add_argument("--kills", type=int, default=20)
    s.add_argument("--terms", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_chaos)

    _add_launch(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --run-dir d steps=10`), which argparse's
    # positional handling does not allow with subcommands; collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "launch") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from gptjax import errors
    from gptjax.checkpoint_io import CheckpointError
    from gptjax.config import ConfigError
    from gptjax.data import DataError
    from gptjax.storage import StorageError
    from gptjax.tokenizer import TokenizerError

    _one_line_background_errors()
    _persistent_compilation_cache()
    try:
        return args.func(args)
    except (ConfigError, DataError, TokenizerError, CheckpointError, StorageError, FileNotFoundError) as e:
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

    from gptjax import storage

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(storage.cache_root() / "jax"))


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
