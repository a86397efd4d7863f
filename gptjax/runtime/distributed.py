"""Multi-controller start-up: jax.distributed when this process is one of several.

Detection, in order:
1. GPTJAX_COORDINATOR (host:port), GPTJAX_NUM_PROCESSES, GPTJAX_PROCESS_ID: any launcher
   (ours for `local` and `k8s` set them; set them by hand elsewhere).
2. SLURM, inside an `srun` step with more than one task: JAX's own cluster detection.
3. A Cloud TPU slice with several hosts (TPU_WORKER_HOSTNAMES on GKE, or GPTJAX_AUTO_DISTRIBUTED=1
   from our tpu launcher on TPU VMs): JAX's own cluster detection.
Otherwise the run is single-process and nothing is started.

The heartbeat timeout is deliberate: jax 0.10.2 waits 100 s by default before declaring a silent
peer dead; we use HEARTBEAT_TIMEOUT_S so a dead process ends the others within about that time.
The shutdown barrier, in contrast, waits for live peers that finish their last host-side work
later (process 0 writes the sample and the final manifests alone; a loaded host stretches this):
30 s proved too short on a busy 2-core CI machine, and a dead peer is caught by the heartbeat
anyway, so a generous SHUTDOWN_TIMEOUT_S costs nothing when something fails.
"""

from __future__ import annotations

import itertools
import os

# JAX is imported inside the functions: launchers read the environment names below and must not
# pay for (or initialise) JAX.
HEARTBEAT_TIMEOUT_S = 15
INIT_TIMEOUT_S = 120
SHUTDOWN_TIMEOUT_S = 180
ENV_COORDINATOR, ENV_NUM, ENV_ID = "GPTJAX_COORDINATOR", "GPTJAX_NUM_PROCESSES", "GPTJAX_PROCESS_ID"
# Set by the tpu launcher: TPU VM hosts learn their peers from the metadata server, not from the
# environment, so JAX's own detection must be asked for explicitly.
ENV_AUTO = "GPTJAX_AUTO_DISTRIBUTED"


class DistributedError(RuntimeError):
    """The multi-process environment is incomplete or inconsistent."""


def detect(env: dict[str, str] | None = None) -> str | None:
    """Which cluster environment launched us: 'explicit', 'slurm', 'tpu', or None (single process)."""
    env = os.environ if env is None else env
    if env.get(ENV_COORDINATOR):
        missing = [k for k in (ENV_NUM, ENV_ID) if not env.get(k)]
        if missing:
            raise DistributedError(f"{ENV_COORDINATOR}={env[ENV_COORDINATOR]} is set but {', '.join(missing)} "
                                   "is not; set all three (coordinator host:port, process count, process id)")
        return "explicit"
    if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
        return "slurm"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if env.get(ENV_AUTO) == "1" or (hosts and len(hosts.split(",")) > 1):
        return "tpu"
    return None


# gloo gives a peer 30 s (fixed in jaxlib) to join the first collective's context; start-up work
# that differs between processes (process 0 writes run.json, restores differ in speed on a loaded
# host) must not eat into that, so processes meet here first, at the coordination service.
START_BARRIER_TIMEOUT_S = 600
_BARRIER_COUNT = itertools.count()


def wait_for_peers(name: str, timeout_s: int = START_BARRIER_TIMEOUT_S) -> None:
    """Block until every process reaches the barrier `name` (a no-op for one process). The
    coordination service's barrier, not a collective: it has its own timeout and no gloo context."""
    import jax

    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    # A barrier name may be used once; every process passes the same barriers in the same order.
    key = f"{name}-{next(_BARRIER_COUNT)}"
    multihost.get_barrier_sync_fn()(key=key, timeout_ms=timeout_s * 1000)


def compile_together(fn, *args, name: str) -> None:
    """Compile jitted `fn` for `args` on every process, then wait for all of them (a no-op for one
    process). gloo gives a collective's first run 30 s to find its peers, and on a loaded host one
    process can finish compiling much later than another ("GetKeyValue() timed out"); after this
    barrier the first run starts together. jit keeps the executable: the call that follows only
    traces."""
    import jax

    if jax.process_count() == 1:
        return
    fn.lower(*args).compile()
    wait_for_peers(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process: every process gets the same answer, so all leave a
    loop of collectives at the same iteration (a collective, so every process must call it)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    with jax.transfer_guard_device_to_host("allow"):  # the answer comes back to every host
        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def initialize() -> int:
    """Start jax.distributed if launched as one of several processes; returns the process count."""
    import jax

    kind = detect()
    if kind is None:
        return 1
    timeouts = dict(initialization_timeout=INIT_TIMEOUT_S, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                    shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    if kind == "explicit":
        jax.distributed.initialize(coordinator_address=os.environ[ENV_COORDINATOR],
                                   num_processes=int(os.environ[ENV_NUM]), process_id=int(os.environ[ENV_ID]),
                                   **timeouts)
    else:
        jax.distributed.initialize(**timeouts)
    return jax.process_count()
