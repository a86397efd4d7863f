"""`gptjax finetune`."""

from __future__ import annotations

from gptjax.runtime import flags


def _finetune(args) -> int:
    from gptjax.config_files import load_train_config, parse_override
    from gptjax.finetune import task_heads

    given = {".".join(path): value for path, value in map(parse_override, args.overrides)}
    recipe = task_heads.gpt1_recipe(len(task_heads.read_examples(args.train, args.task)), given)
    overrides = [f"init_from={args.model}", f"finetune.task={args.task}", f"finetune.train_file={args.train}",
                 *([f"finetune.eval_file={args.eval}"] if args.eval else []),
                 *(f"{k}={v}" for k, v in recipe.items()), *args.overrides]
    cfg = load_train_config(args.config, overrides)
    result = task_heads.finetune_run(cfg, args.run_dir, progress=not args.no_progress)
    if "stopped" in result:
        print(f"{args.task}: stopped at step {result['steps']}: {result['stopped']}; the same command resumes")
        return 0
    shown = ", ".join(f"{k} {result[k]:.4f}" for k in ("accuracy", "pearson", "spearman") if k in result)
    print(f"{args.task}: {shown or 'no eval file'}; {args.run_dir}/eval.json")
    return 0


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
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
    flags.add_xla_profile(s)
    s.set_defaults(func=_finetune)
