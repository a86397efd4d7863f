"""`local`: N processes on this host, M CPU devices each, joined by jax.distributed on localhost.

The launcher watches its children: when one fails, it stops the others and names the one that
died, so a dead peer never leaves the job hanging in a collective. A process that ends with the
watchdog's code (3: hung) is restarted with its peers, up to --retries times: the run resumes from
its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from gptjax.errors import EXIT_HUNG
from gptjax.launch.common import Job, record, shell_join
from gptjax.runtime import distributed


def add_arguments(p) -> None:
    p.add_argument("--processes", type=int, default=2, help="number of processes (JAX controllers)")
    p.add_argument("--devices-per-process", type=int, default=0,
                   help="fake CPU devices per process (XLA_FLAGS); 0 leaves the platform's devices")
    p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0: a free one)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds the survivors get to exit after a process dies, before SIGKILL")
    p.add_argument("--retries", type=int, default=3,
                   help="restarts of a job whose process the watchdog ended as hung (exit code 3)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_envs(args, port: int) -> list[dict[str, str]]:
    envs = []
    for i in range(args.processes):
        env = {distributed.ENV_COORDINATOR: f"127.0.0.1:{port}", distributed.ENV_NUM: str(args.processes),
               distributed.ENV_ID: str(i)}
        if args.devices_per_process:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices_per_process}"
            env["JAX_PLATFORMS"] = "cpu"
        envs.append(env)
    return envs


def launch(jobs: list[Job], args) -> int:
    for job in jobs:
        port = args.port or _free_port()
        envs = process_envs(args, port)
        cmd = job.train_args(sys.executable)
        lines = [shell_join([f"{k}={v}" for k, v in env.items()] + cmd) for env in envs]
        if args.dry_run:
            print("\n".join(lines))
            continue
        record(job, "local", "\n".join(lines))
        rc = _run_group(cmd, envs, args.grace)
        for attempt in range(1, args.retries + 1):
            if rc != EXIT_HUNG:
                break
            print(f"gptjax launch local: the job hung (exit code {EXIT_HUNG}); restarting it from its last checkpoint "
                  f"(retry {attempt} of {args.retries})", file=sys.stderr, flush=True)
            envs = process_envs(args, _free_port())  # the old coordinator's port may linger
            rc = _run_group(cmd, envs, args.grace)
        if rc != 0:
            return rc
    return 0


def _run_group(cmd: list[str], envs: list[dict[str, str]], grace: float) -> int:
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}) for env in envs]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                print(f"gptjax launch local: process {i} of {len(procs)} died ({how}); stopping the others",
                      file=sys.stderr, flush=True)
                _stop(procs, grace)
                return EXIT_HUNG if code == EXIT_HUNG else 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        # The children got the same SIGINT and are finishing a step and saving: let them.
        for p in procs:
            p.wait()
        raise


def _stop(procs, grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
