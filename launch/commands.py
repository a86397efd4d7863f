"""`gptjax launch BACKEND`: each backend's flags come from its own module."""

from __future__ import annotations


def _launch(args) -> int:
    from gptjax.launch import BACKENDS
    from gptjax.launch.common import make_jobs

    jobs = make_jobs(args.config, args.overrides, args.run_dir, dry_run=args.dry_run)
    return BACKENDS[args.backend].launch(jobs, args)


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
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
