"""A real single-node SLURM cluster for the launch tests: munged, slurmctld and slurmd as root.

Started once per test session in a private directory (its own slurm.conf, state and logs, found
through SLURM_CONF), stopped at the end. `start()` says why when it cannot run here.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

from helpers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")


def unavailable() -> str | None:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "SLURM tests need root (slurmd runs jobs as root here)"
    missing = [d for d in (*DAEMONS, "sbatch", "srun", "sinfo") if shutil.which(d) is None
               and not pathlib.Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"missing {', '.join(missing)}: install Debian's slurm-wlm and munge"
    if not pathlib.Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (the munge package creates it)"
    return None


def _conf(root: pathlib.Path, host: str, cpus: int, memory_mb: int) -> str:
    return f"""ClusterName=gptjaxtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobCompType=jobcomp/none
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""




class Cluster:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        host = socket.gethostname()
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        (self.root / "slurm.conf").write_text(_conf(self.root, host, cpus, 4096))
        self._ensure_munged()
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.root / "slurm.conf")],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(self.root / "slurm.conf")], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self._wait_idle()

    def _ensure_munged(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return
        pathlib.Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        logs = "".join((self.root / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log")
                       if (self.root / f).exists())
        raise RuntimeError(f"the SLURM node did not become idle within {timeout} s:\n{logs}")

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
