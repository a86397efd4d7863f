"""`gptjax train`, and `gptjax data prepare` for the data a training config names (init_from's
tokenizer included)."""

from __future__ import annotations

import pathlib
import time

from gptjax.runtime import flags


def _train(args) -> int:
    from gptjax.config_files import load_train_config
    from gptjax.runtime import distributed
    from gptjax.training import loop

    overrides = list(args.overrides)
    if args.profile and not any(o.partition("=")[0] == "profile.start_step" for o in overrides):
        overrides.append("profile.start_step=0")  # after the first step, which compiles
    cfg = load_train_config(args.config, overrides)  # bad input fails before any connection
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


def _data_prepare(args) -> int:
    import json

    from gptjax.config_files import load_train_config
    from gptjax.data import loader
    from gptjax.store import paths
    from gptjax.training import warm_start

    cfg = load_train_config(args.config, args.overrides)
    if args.output:
        paths.scheme(args.output)  # an unsupported URL is refused before any encoding
    t0 = time.perf_counter()
    tokens = loader.load_tokens(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    meta_file = tokens.directory / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    rate = f", {meta['mb_per_sec']:.1f} MB/s on {meta['processes']} processes" if meta.get("mb_per_sec") else ""
    print(f"{tokens.directory}: {tokens.train.size:,} train and {tokens.val.size:,} validation tokens "
          f"({tokens.tokenizer.name} tokenizer{rate}; {time.perf_counter() - t0:.1f} s here)")
    if args.output:
        t0 = time.perf_counter()
        loader.publish(tokens, args.output)
        print(f"copied to {args.output} in {time.perf_counter() - t0:.1f} s; train from it with "
              f"data.token_dir={args.output}")
    return 0


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
    s = sub.add_parser("train", help="train (or resume) a model")
    s.add_argument("config", help="a YAML file (see experiments/) or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value with YAML values, e.g. optim.lr=3e-4")
    s.add_argument("--run-dir", help="run directory (default: runs/<config name>; resumes if it has checkpoints)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--profile", action="store_true", help="trace profile.steps steps after the first (which "
                   "compiles) into RUN_DIR/profile with a summary of where their time went (profile.start_step=0, "
                   "unless an override sets it)")
    flags.add_xla_profile(s)
    s.set_defaults(func=_train)

    s = sub.add_parser("data", help="prepare token files")
    data_sub = s.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("prepare", help="tokenize a config's data (data.text_files or data.corpus) into the "
                            "token cache, in parallel, so training starts at once")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. data.text_files=[owt/*.jsonl]")
    s.add_argument("--output", help="also copy the token files (train.bin, val.bin, meta.json) to this directory, "
                   "gs://bucket/path or s3://bucket/path, for data.token_dir")
    s.set_defaults(func=_data_prepare)
