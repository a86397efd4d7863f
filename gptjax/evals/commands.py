"""`gptjax eval` and `gptjax lm-eval` (whose arguments all belong to the harness: cli.main hands them over)."""

from __future__ import annotations


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


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
    from gptjax.evals.evaluate import TASK_NAMES, EvalOptions

    d = EvalOptions(task="perplexity")
    s = sub.add_parser("eval", help="perplexity, multiple choice, LAMBADA and HumanEval, scored as lm-eval does")
    s.add_argument("model", help="run directory (its latest verified checkpoint), gptjax or Hugging Face directory")
    s.add_argument("--task", required=True, help=f"one of: {', '.join(TASK_NAMES)}")
    s.add_argument("--data", help="the benchmark file (docs/evaluation.md gives each task's layout and source)")
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

    sub.add_parser("lm-eval", help="lm-evaluation-harness's own command line with the gptjax model registered "
                   "(--model gptjax --model_args path=DIR)", add_help=False)
