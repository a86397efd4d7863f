"""`slurm`: one sbatch script per run (a job array for a sweep), one `srun` task per process.

Inside the step, JAX's SLURM detection connects the tasks; `--kill-on-bad-exit` ends the step
when any task dies.

Jobs come back by themselves. They are submitted with `--requeue`, so a preempted job (SIGTERM to
every task: each saves and exits 0) is queued again by SLURM; and with `--signal=TERM@S`, so S
seconds before the time limit the tasks save and stop. After the step the script requeues its own
job (`scontrol requeue`: SLURM does not requeue a job that reached its limit) when the run stopped
before its last step or the watchdog ended it as hung (exit code 3), at most --max-requeues times
(SLURM_RESTART_COUNT). A requeued job runs the same command, which resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from gptjax.launch.common import Job, record, shell_join
from gptjax.store import paths


def add_arguments(p) -> None:
    p.add_argument("--nodes", type=int, default=1, help="#SBATCH --nodes")
    p.add_argument("--tasks-per-node", type=int, default=1, help="processes per node (one per GPU host or GPU)")
    p.add_argument("--gpus-per-task", type=int, default=0, help="#SBATCH --gpus-per-task (0: none)")
    p.add_argument("--cpus-per-task", type=int, default=0, help="#SBATCH --cpus-per-task (0: SLURM's default)")
    p.add_argument("--time", default="01:00:00", help="#SBATCH --time limit, HH:MM:SS")
    p.add_argument("--partition", default=None, help="#SBATCH --partition")
    p.add_argument("--account", default=None, help="#SBATCH --account")
    p.add_argument("--job-name", default="gptjax", help="#SBATCH --job-name")
    p.add_argument("--cpu-devices-per-task", type=int, default=0,
                   help="fake CPU devices per task (XLA_FLAGS), for CPU-only clusters and tests")
    p.add_argument("--python", default=sys.executable, help="the Python that runs gptjax on the nodes")
    p.add_argument("--wait", action="store_true", help="block until the job ends (sbatch --wait)")
    p.add_argument("--signal-before", type=int, default=120,
                   help="seconds before the time limit at which the tasks get SIGTERM, save and stop")
    p.add_argument("--max-requeues", type=int, default=20,
                   help="times a job that stopped early (time limit, preemption, a hang) requeues itself")


def script(jobs: list[Job], args) -> str:
    """The sbatch script: one run, or a job array whose task i runs jobs[i]."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={args.job_name}", f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={args.tasks_per_node}", f"#SBATCH --time={args.time}",
             "#SBATCH --requeue", f"#SBATCH --signal=TERM@{args.signal_before}", "#SBATCH --open-mode=append"]
    if args.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={args.gpus_per_task}")
    if args.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
    for flag in ("partition", "account"):
        if getattr(args, flag):
            lines.append(f"#SBATCH --{flag}={getattr(args, flag)}")
    out_dir = _log_dir(jobs, args)
    if _array(jobs, args):
        lines += [f"#SBATCH --array=0-{len(jobs) - 1}", f"#SBATCH --output={out_dir}/slurm-%A_%a.out"]
    else:
        lines.append(f"#SBATCH --output={out_dir}/slurm-%j.out")
    lines += ["set -euo pipefail", f"cd {shell_join([os.getcwd()])}"]
    if args.cpu_devices_per_task:
        lines += [f"export XLA_FLAGS=--xla_force_host_platform_device_count={args.cpu_devices_per_task}",
                  "export JAX_PLATFORMS=cpu"]
    srun = ["srun", "--kill-on-bad-exit=1"]
    if not _array(jobs, args):
        lines += [f"RUN_DIR={shell_join([jobs[0].run_dir])}", shell_join(srun + jobs[0].train_args(args.python)) + _rc]
    else:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for i, job in enumerate(jobs):
            lines.append(f"  {i}) RUN_DIR={shell_join([job.run_dir])}; {shell_join(srun + job.train_args(args.python))}"
                         f"{_rc} ;;")
        lines += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    unfinished = shell_join([args.python, "-c", "import sys; from gptjax.launch.slurm import unfinished; "
                             "sys.exit(0 if unfinished(sys.argv[1]) else 1)"])
    lines += [f'if {{ [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]; }} && {unfinished} "$RUN_DIR"; then',
              f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {args.max_requeues} ]; then',
              '    echo "gptjax: the run stopped before its last step (exit code $rc); requeueing job $SLURM_JOB_ID"',
              '    scontrol requeue "$SLURM_JOB_ID"',
              "  else",
              f'    echo "gptjax: the run stopped before its last step, but the job was requeued {args.max_requeues} '
              'times already (--max-requeues)" >&2',
              "  fi",
              "fi",
              'exit "$rc"']
    return "\n".join(lines) + "\n"


# After the step: its exit code, without `set -e` ending the script before the requeue check.
_rc = " && rc=0 || rc=$?"


def unfinished(run_dir: str) -> bool:
    """Whether the run in run_dir has steps left: it stopped (a signal, the time limit) or has no
    result yet (the watchdog ended it)."""
    import json

    try:
        return json.loads(paths.read_text(paths.as_path(run_dir) / "result.json")).get("status") != "finished"
    except FileNotFoundError:
        return True


def _array(jobs: list[Job], args) -> bool:
    """A job array for several runs, and for every sweep submission (even of one run left), so a
    sweep's logs and script always sit in the sweep directory."""
    return len(jobs) > 1 or getattr(args, "array", False)


def _log_dir(jobs: list[Job], args) -> pathlib.Path:
    """Where SLURM writes its logs and we the sbatch script: beside the runs, or, for runs on
    object storage (which SLURM cannot write), in ./slurm-logs."""
    run_dir = jobs[0].run_dir
    if paths.is_remote(run_dir):
        return pathlib.Path("slurm-logs").absolute()
    return (pathlib.Path(run_dir).parent if _array(jobs, args) else pathlib.Path(run_dir)).absolute()


def launch(jobs: list[Job], args) -> int:
    text = script(jobs, args)
    if args.dry_run:
        print(text, end="")
        return 0
    for job in jobs:
        record(job, "slurm", text)
    path = _log_dir(jobs, args) / "sbatch.sh"
    paths.write_text(path, text)
    cmd = ["sbatch", "--parsable"] + (["--wait"] if args.wait else []) + [str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 and not out.stdout.strip():
        print(f"gptjax launch slurm: sbatch failed: {out.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "?"
    print(f"submitted SLURM job {job_id}: {path}")
    return out.returncode
