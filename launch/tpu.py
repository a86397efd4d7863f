"""`tpu`: gcloud commands for a Cloud TPU VM slice: copy, install and run on every worker.

`--queued` first creates the slice through a queued resource. Every process of the slice runs the
same command; JAX's TPU detection connects them. `--slices N` (multi-slice) asks the queued
resource for N slices (nodes NAME-0 .. NAME-{N-1}) joined over the data-centre network, whose
runtime sets the multi-slice environment; the run's mesh.dcn_data must be N.
"""

from __future__ import annotations

import subprocess
import sys

from gptjax.launch.common import Job, record, require_shared_run_dir, shell_join
from gptjax.runtime import distributed


def add_arguments(p) -> None:
    p.add_argument("--tpu-name", required=True, help="TPU VM (slice) name")
    p.add_argument("--zone", required=True, help="zone, e.g. us-central2-b")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    p.add_argument("--queued", action="store_true", help="create the slice with a queued resource first")
    p.add_argument("--slices", type=int, default=1, help="multi-slice: this many slices of --accelerator-type "
                   "(queued resource --node-count), data parallel across them (the config's mesh.dcn_data)")
    p.add_argument("--accelerator-type", default="v4-32", help="with --queued: slice type")
    p.add_argument("--runtime-version", default="tpu-ubuntu2204-base", help="with --queued: TPU VM image")
    p.add_argument("--spot", action="store_true", help="with --queued: spot capacity")
    p.add_argument("--remote-dir", default="gptjax", help="checkout directory on the workers")


def nodes(args) -> list[str]:
    """The TPU VM names: the slice itself, or each slice of a multi-slice queued resource."""
    return [args.tpu_name] if args.slices == 1 else [f"{args.tpu_name}-{i}" for i in range(args.slices)]


def commands(jobs: list[Job], args) -> list[list[str]]:
    where = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
    cmds = []
    if args.queued:
        which = ["--node-id", args.tpu_name] if args.slices == 1 else \
            ["--node-count", str(args.slices), "--node-prefix", args.tpu_name]
        cmds.append(["gcloud", "compute", "tpus", "queued-resources", "create", f"{args.tpu_name}-qr", *which,
                     "--accelerator-type", args.accelerator_type, "--runtime-version", args.runtime_version, *where]
                    + (["--spot"] if args.spot else []))
        # `create` returns while the request waits for capacity: copy only once the slice is ACTIVE.
        describe = shell_join(["gcloud", "compute", "tpus", "queued-resources", "describe", f"{args.tpu_name}-qr",
                               *where, "--format=value(state.state)"])
        cmds.append(["bash", "-c", f"until [ \"$({describe})\" = ACTIVE ]; do sleep 30; done"])

    def ssh(node):
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *where, "--worker=all", "--command"]

    for node in nodes(args):
        cmds.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", ".", f"{node}:~/{args.remote_dir}",
                     *where, "--worker=all"])
        cmds.append(ssh(node) + [f"cd ~/{args.remote_dir} && python3 -m pip install -q -e '.[tpu]'"])
    for job in jobs:
        # JAX finds the other hosts of a TPU VM slice itself; the marker tells gptjax to ask it to.
        run = f"cd ~/{args.remote_dir} && {distributed.ENV_AUTO}=1 {shell_join(job.train_args('python3'))}"
        if args.slices == 1:
            cmds.append(ssh(args.tpu_name) + [run])
        else:  # every slice at once: each waits for the others at start-up
            together = " & ".join(shell_join(ssh(node) + [run]) for node in nodes(args))
            cmds.append(["bash", "-c", f"{together} & wait"])
    return cmds


def check_slices(jobs: list[Job], args) -> None:
    """Each run's mesh.dcn_data is the number of slices it is launched on."""
    from gptjax.config import ConfigError
    from gptjax.config_files import load_train_config

    if args.slices < 1:
        raise ConfigError(f"--slices {args.slices}: give a number of slices >= 1")
    for job in jobs:
        if job.command is None:
            dcn = load_train_config(job.config, list(job.overrides)).mesh.dcn_data
            if dcn != args.slices:
                raise ConfigError(f"--slices {args.slices} but the run's mesh.dcn_data = {dcn}; set "
                                  f"mesh.dcn_data={args.slices} (data parallel across the slices)")


# A queued resource does not come back after a preemption (SLURM requeues; see slurm.py).
PREEMPTED = ("# If the slice is preempted: run this same gptjax command again. It creates the queued resource anew and "
             "each run resumes from its last checkpoint in its run directory (a sweep: `gptjax sweep run` submits "
             "only the runs not finished).")


def launch(jobs: list[Job], args) -> int:
    require_shared_run_dir(jobs, "tpu")
    check_slices(jobs, args)
    cmds = commands(jobs, args)
    text = "\n".join(shell_join(c) for c in cmds)
    if args.dry_run:
        print(text)
        print(PREEMPTED, file=sys.stderr)
        return 0
    for job in jobs:
        record(job, "tpu", text)
    for c in cmds:
        rc = subprocess.run(c).returncode
        if rc != 0:
            print(f"gptjax launch tpu: failed ({rc}): {shell_join(c)}", file=sys.stderr)
            return rc
    return 0
