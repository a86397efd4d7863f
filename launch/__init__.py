"""Cluster launchers, installed as `gptjax.launch`: thin, with named flags and --dry-run.

Each backend module has `add_arguments(parser)` and `launch(jobs, args) -> int`; `common` holds
what they share (the train command, sweeps, recording the launch in the run directory);
`commands` adds `gptjax launch BACKEND` to the command line.
"""

from gptjax.launch import k8s, local, slurm, tpu

BACKENDS = {"local": local, "slurm": slurm, "tpu": tpu, "k8s": k8s}
