"""Multi-process training through the launchers, on localhost and on a real SLURM cluster.

The SLURM tests start a single-node cluster once per session (tests/slurm_cluster.py). Where
it cannot start they skip loudly; GPTJAX_REQUIRE_SLURM=1 (set by .ci/run) turns that into a failure.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import slurm_cluster
import yaml
from helpers import TINY_RUN, losses, metrics, unavailable, wait_until
from helpers import gptjax_cli as gptjax

from gptjax import cli
from gptjax.config import MeshConfig
from gptjax.config_files import load_train_config
from gptjax.runtime import sharding
from gptjax.store import checkpoint, manifest
from gptjax.training import trainer

TINY = {**TINY_RUN, "steps": 8, "eval_every": 4, "checkpoint_every": 4, "sample_tokens": 10}
ONE_PROCESS_8_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def single_process_run(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    gptjax("train", config_file, "--run-dir", run_dir, "--no-progress", env=ONE_PROCESS_8_DEVICES)
    return run_dir


@pytest.fixture(scope="module")
def two_process_run(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two") / "run"
    gptjax("launch", "local", config_file, "--run-dir", run_dir, "--processes", 2, "--devices-per-process", 4)
    return run_dir


@pytest.mark.slow
def test_two_processes_match_one_process(single_process_run, two_process_run):
    one, two = losses(single_process_run), losses(two_process_run)
    assert len(one) == len(two) == 8
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
    launch = json.loads((two_process_run / "launch.json").read_text())
    assert launch["backend"] == "local" and "GPTJAX_PROCESS_ID=1" in launch["submitted"]
    assert (two_process_run / "config.yaml").is_file() and (two_process_run / "samples" / "step_8.txt").is_file()


@pytest.mark.slow
def test_a_process_that_compiles_much_later_than_its_peer_still_meets_it(config_file, tmp_path):
    # The first collective of a step waits for every process to compile it (a CI failure: gloo's
    # 30 s rendezvous ran out while one process of two was still compiling on a loaded host).
    paths = [str(pathlib.Path(__file__).parent / "slow_compile"), os.environ.get("PYTHONPATH")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    run_dir = tmp_path / "run"
    out = gptjax("launch", "local", config_file, "steps=4", "--run-dir", run_dir, "--processes", 2,
                 "--devices-per-process", 2, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(losses(run_dir)) == 4


def _restore_params(run_dir, mesh_cfg, n_devices):
    cfg = load_train_config(str(run_dir / "config.yaml"))
    tr = trainer.make_trainer(cfg, sharding.make_mesh(mesh_cfg, jax.devices()[:n_devices]))
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", 10, None, read_only=True)
    try:
        state, meta = ckpts.restore(tr.abstract_state)
    finally:
        ckpts.close()
    return meta["step"], jax.device_get(state["params"])


@pytest.mark.slow
def test_checkpoints_move_between_process_counts(single_process_run, two_process_run, config_file, tmp_path):
    # Written by 2 processes, read by 1: the same parameters as the 1-process run's (to 1e-5: the
    # runs themselves agree that far), and exactly the ones process 0 gathered for its sample.
    step, two = _restore_params(two_process_run, MeshConfig(data=1, fsdp=4), 4)
    _, one = _restore_params(single_process_run, MeshConfig(data=1), 1)
    assert step == 8
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # Written by 1 process, resumed by 2: the steps past 8 must agree with the same resume by 1
    # process (both continue from the copied checkpoint of step 8 with the schedule of 10 steps).
    resumed, one_resumed = tmp_path / "resumed", tmp_path / "one_resumed"
    shutil.copytree(single_process_run, resumed)
    shutil.copytree(single_process_run, one_resumed)
    gptjax("launch", "local", config_file, "steps=10", "--run-dir", resumed, "--processes", 2,
           "--devices-per-process", 4)
    gptjax("train", config_file, "steps=10", "--run-dir", one_resumed, "--no-progress", env=ONE_PROCESS_8_DEVICES)
    rows, reference = losses(resumed), losses(one_resumed)
    assert len(rows) == len(reference) == 10 and rows[:8] == losses(single_process_run)
    np.testing.assert_allclose(rows[8:], reference[8:], rtol=0, atol=1e-5)
    assert abs(rows[9] - rows[7]) > 1e-4, "the resumed steps must be new steps, not copies"


@pytest.mark.slow
def test_a_batch_replicated_across_processes_matches_one_process(config_file, tmp_path):
    # mesh tensor=8 over 2 processes x 4 devices: the batch axes (data, fsdp) span no process, so
    # each process holds the whole batch, not half of it.
    mesh = ["mesh.data=1", "mesh.tensor=8", "steps=4", "eval_every=4", "checkpoint_every=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    gptjax("train", config_file, *mesh, "--run-dir", one, "--no-progress", env=ONE_PROCESS_8_DEVICES)
    gptjax("launch", "local", config_file, *mesh, "--run-dir", two, "--processes", 2, "--devices-per-process", 4)
    np.testing.assert_allclose(losses(two), losses(one), rtol=0, atol=1e-5)


def _pid_of_process(run_dir, process_id):
    out = subprocess.run(["pgrep", "-f", f"gptjax.cli train .* --run-dir {run_dir}"], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"GPTJAX_PROCESS_ID={process_id}".encode() in env:
            return int(pid)
    return None


def _start_two_processes(config_file, run_dir, *overrides):
    """A long 2-process local launch in the background (tests stop it themselves)."""
    return subprocess.Popen([sys.executable, "-m", "gptjax.cli", "launch", "local", str(config_file), "steps=100000",
                             *overrides, "--run-dir", str(run_dir), "--processes", "2", "--devices-per-process", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_dead_process_ends_the_job_quickly_and_restart_resumes(config_file, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_two_processes(config_file, run_dir, "checkpoint_every=4")
    wait_until(lambda: (run_dir / "checkpoints" / "8").is_dir())
    victim = _pid_of_process(run_dir, 1)
    assert victim is not None, "process 1 not found"
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    elapsed = time.time() - killed_at
    assert proc.returncode != 0
    assert "process 1 of 2 died (signal SIGKILL)" in err
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after a process died"
    last = checkpoint.Checkpoints(run_dir / "checkpoints", 10, None, read_only=True).latest_step()
    assert last is not None and last >= 8
    out = gptjax("launch", "local", config_file, f"steps={last + 2}", "--run-dir", run_dir, "--processes", 2,
                 "--devices-per-process", 4)
    assert f"resumed from step {last}" in out.stderr


@pytest.mark.slow
@pytest.mark.workflow
def test_a_peer_stopped_with_sigstop_is_a_hang_the_watchdog_turns_into_a_restart(config_file, tmp_path):
    """Process 1 frozen (SIGSTOP) mid-run: process 0 waits in a collective for ever. Its watchdog
    fires after watchdog.timeout_s (exit 3), the launcher stops the frozen peer and restarts the
    job, which resumes from the last checkpoint and finishes; losses equal an uninterrupted run."""
    common = ["steps=60", "checkpoint_every=10", "eval_every=60", "watchdog.timeout_s=5"]
    reference = tmp_path / "reference"
    gptjax("train", config_file, *common, "--run-dir", reference, "--no-progress")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gptjax.cli", "launch", "local", str(config_file), *common,
                             "--run-dir", str(run_dir), "--processes", "2", "--devices-per-process", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (run_dir / "checkpoints" / "10").is_dir(), what="the first checkpoint")
    victim = _pid_of_process(run_dir, 1)
    assert victim is not None, "process 1 not found"
    stopped_at = time.time()
    os.kill(victim, signal.SIGSTOP)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    fired = re.findall(r"watchdog: no step completed in (\d+) s \(limit 5 s", err)
    assert fired, err[-3000:]
    assert "the job hung (exit code 3); restarting it from its last checkpoint (retry 1 of 3)" in err
    assert time.time() - stopped_at < 120
    np.testing.assert_allclose(losses(run_dir), losses(reference), rtol=1e-5)


# --- dry runs ---------------------------------------------------------------------------------

def test_k8s_dry_run_is_a_jobset(config_file, capsys):
    assert cli.main(["launch", "k8s", str(config_file), "--image", "gcr.io/p/gptjax:1", "--hosts", "4",
                     "--tpu-chips-per-host", "4", "--tpu-topology", "4x4", "--run-dir", "/runs/x", "--dry-run"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["apiVersion"].startswith("jobset.x-k8s.io/") and doc["kind"] == "JobSet"
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 4
    container = job["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GPTJAX_NUM_PROCESSES"]["value"] == "4"
    assert "job-completion-index" in env["GPTJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert container["command"][3:5] == ["train", str(config_file)]


def test_tpu_dry_run_runs_on_all_workers(config_file, capsys):
    assert cli.main(["launch", "tpu", str(config_file), "--tpu-name", "pod", "--zone", "us-central2-b", "--queued",
                     "--accelerator-type", "v4-32", "--run-dir", "/mnt/runs/r", "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus queued-resources create pod-qr --node-id pod")
    assert "queued-resources describe pod-qr" in lines[1] and "ACTIVE" in lines[1]
    assert all("--worker=all" in line for line in lines[2:]) and len(lines) == 5
    assert "GPTJAX_AUTO_DISTRIBUTED=1" in lines[-1] and "gptjax.cli train" in lines[-1]
    assert "--run-dir /mnt/runs/r" in lines[-1]
    assert "If the slice is preempted: run this same gptjax command again" in captured.err


def test_a_dry_run_reads_no_run_directory(config_file, capsys, monkeypatch):
    """A dry run prints what would be submitted from a machine that may not reach the bucket (the
    docs' TPU examples name gs://my-bucket); a real launch checks the run it resumes first."""
    from gptjax.training import resume

    def unreachable(run_dir, cfg):
        raise OSError(f"Cannot connect to host for {run_dir}")
    monkeypatch.setattr(resume, "check", unreachable)
    args = ["launch", "tpu", str(config_file), "--tpu-name", "pod", "--zone", "z", "--run-dir", "gs://b/runs/x"]
    assert cli.main([*args, "--dry-run"]) == 0 and "--run-dir gs://b/runs/x" in capsys.readouterr().out
    assert cli.main(args) != 0 and "Cannot connect to host for gs://b/runs/x" in capsys.readouterr().err


def test_tpu_dry_run_of_two_slices_starts_them_together(config_file, capsys):
    args = ["launch", "tpu", str(config_file), "--tpu-name", "ms", "--zone", "z", "--queued", "--slices", "2",
            "--accelerator-type", "v5litepod-8", "--run-dir", "/mnt/runs/r", "--dry-run"]
    assert cli.main(args) == 2 and "--slices 2 but the run's mesh.dcn_data = 1" in capsys.readouterr().err
    assert cli.main([*args, "mesh.dcn_data=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "queued-resources create ms-qr --node-count 2 --node-prefix ms" in lines[0]
    assert sum("tpu-vm scp" in line for line in lines) == 2 and "ms-0:~/gptjax" in lines[2] and "ms-1:~/" in lines[4]
    run = lines[-1]
    assert run.startswith("bash -c") and "ssh ms-0" in run and "ssh ms-1" in run and run.endswith("& wait'")
    assert run.count("mesh.dcn_data=2") == 2


def test_multi_host_backends_refuse_a_relative_run_dir(config_file, capsys):
    assert cli.main(["launch", "tpu", str(config_file), "--tpu-name", "pod", "--zone", "z", "--run-dir", "runs/x",
                     "--dry-run"]) == 2
    assert "absolute path" in capsys.readouterr().err


def test_sweep_validation_happens_before_submission(config_file, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": str(config_file), "zip": {"optim.lrr": [1e-3, 2e-3]}}))
    assert cli.main(["sweep", "run", str(sweep), "--launcher", "slurm", "--run-dir", str(tmp_path / "s"),
                     "--dry-run"]) == 2
    assert "unknown field 'lrr'; did you mean lr?" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# --- SLURM --------------------------------------------------------------------------------------

# One cluster per pytest worker: keep every SLURM test on the same worker (scripts/test.sh runs
# xdist with --dist loadgroup).
slurm_group = pytest.mark.xdist_group("slurm")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    unavailable(slurm_cluster.unavailable(), "GPTJAX_REQUIRE_SLURM", "no SLURM cluster can start", "SKIPPING SLURM TESTS")
    cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


@slurm_group
def test_slurm_script_is_accepted_by_sbatch(slurm, config_file, tmp_path):
    out = gptjax("launch", "slurm", config_file, "--run-dir", tmp_path / "r", "--tasks-per-node", 2,
                 "--cpu-devices-per-task", 4, "--time", "00:10:00", "--dry-run", env=slurm.env)
    script = tmp_path / "job.sh"
    script.write_text(out.stdout)
    assert "#SBATCH --ntasks-per-node=2" in out.stdout and "srun --kill-on-bad-exit=1" in out.stdout
    test_only = subprocess.run(["sbatch", "--test-only", str(script)], env=slurm.env, capture_output=True, text=True)
    assert test_only.returncode == 0, test_only.stderr
    assert "to start at" in test_only.stderr


@pytest.mark.slow
@slurm_group
def test_two_slurm_tasks_match_one_process(slurm, config_file, single_process_run, tmp_path):
    run_dir = tmp_path / "run"
    out = gptjax("launch", "slurm", config_file, "--run-dir", run_dir, "--tasks-per-node", 2,
                 "--cpu-devices-per-task", 4, "--wait", env=slurm.env, check=False)
    logs = "".join(p.read_text()[-3000:] for p in run_dir.glob("slurm-*.out"))
    assert out.returncode == 0, f"{out.stderr}\n{logs}"
    np.testing.assert_allclose(losses(run_dir), losses(single_process_run), rtol=0, atol=1e-5)


def _requeued(slurm, job: str) -> None:
    """The job is pending again. SLURM starts a requeued job once its old credential has expired
    (cred_expire: 10 s on the test cluster, 120 s by default); forcing an earlier start got it
    killed as "non-startable: Job credential revoked"."""
    def state() -> str:
        return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=slurm.env, capture_output=True,
                              text=True).stdout.strip()
    wait_until(lambda: state() in ("PENDING", "RUNNING"), timeout=120, what=f"job {job} to be requeued")


@pytest.mark.slow
@pytest.mark.workflow
@slurm_group
def test_a_slurm_job_stopped_early_or_preempted_comes_back_and_finishes(slurm, config_file, tmp_path):
    """The time limit's --signal (SIGTERM to the tasks: here scancel --signal=TERM) makes the run
    save and stop; the script requeues its job. A preemption (scontrol requeue: SIGTERM to the
    whole job) is requeued by SLURM (--requeue). Each time the same command resumes."""
    run_dir = tmp_path / "run"
    out = gptjax("launch", "slurm", config_file, "--run-dir", run_dir, "steps=6000", "checkpoint_every=200", "log_every=50",
                 "eval_every=6000", "--time", "00:10:00", env=slurm.env)
    job = out.stdout.split("submitted SLURM job ")[1].split(":")[0].strip()
    log = run_dir / f"slurm-{job}.out"
    wait_until(lambda: (run_dir / "checkpoints" / "200").is_dir(), timeout=300, what="the first checkpoint")
    subprocess.run(["scancel", "--signal=TERM", job], env=slurm.env, check=True)
    _requeued(slurm, job)
    wait_until(lambda: log.is_file() and "resumed from step" in log.read_text(), timeout=300, what="the requeued job")
    assert "requeueing job" in log.read_text()
    subprocess.run(["scontrol", "requeue", job], env=slurm.env, check=True)
    _requeued(slurm, job)
    wait_until(lambda: log.read_text().count("resumed from step") == 2, timeout=300, what="the preempted job's return")
    wait_until(lambda: (run_dir / "result.json").is_file()
               and json.loads((run_dir / "result.json").read_text())["status"] == "finished", timeout=600,
               what="the run to finish")
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(50, 6001, 50)), "every logged step once"


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(config_file, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_two_processes(config_file, run_dir, "checkpoint_every=1000")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(losses(run_dir)) >= 5)
    victim = _pid_of_process(run_dir, 1)
    assert victim is not None
    os.kill(victim, signal.SIGTERM)  # only process 1 hears it; the flag travels with the step's metrics
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    step = int(err.split("saved step ")[1].split(",")[0])
    assert manifest.verify(run_dir / "checkpoints" / str(step)) is None


@pytest.mark.slow
@slurm_group
def test_slurm_sweep_array_with_a_killed_task_is_finished_by_resubmission(slurm, config_file, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "arr", "base": str(config_file), "seeds": [0, 1, 2, 3],
                                     "overrides": {"steps": 40, "checkpoint_every": 5, "eval_every": 40}}))
    d = tmp_path / "sweep"
    submit = ["sweep", "run", sweep, "--run-dir", d, "--launcher", "slurm", "--time", "00:10:00"]
    out = gptjax(*submit, env=slurm.env)
    job = out.stdout.split("submitted SLURM job ")[1].split(":")[0].strip()
    assert "#SBATCH --array=0-3" in (d / "sbatch.sh").read_text()
    victim = d / "seed1"
    wait_until(lambda: (victim / "checkpoints" / "5").is_dir(), timeout=300, what="array task 1's first checkpoint")
    subprocess.run(["scancel", f"{job}_1"], env=slurm.env, check=True)
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job], env=slurm.env, capture_output=True,
                                          text=True).stdout.strip(), timeout=300, what="the array to end")
    status = gptjax("sweep", "status", d).stdout
    assert "4 runs: 3 finished, 0 failed, 1 interrupted, 0 pending" in status, status
    finished = {s: (d / f"seed{s}" / "result.json").read_text() for s in (0, 2, 3)}
    # Re-submitting the same command runs only the interrupted run, which resumes.
    gptjax(*submit, "--wait", env=slurm.env)
    assert "#SBATCH --array=0-0" in (d / "sbatch.sh").read_text(), "only the one run left is submitted"
    assert "4 runs: 4 finished" in gptjax("sweep", "status", d).stdout
    assert {s: (d / f"seed{s}" / "result.json").read_text() for s in (0, 2, 3)} == finished
    logs = "".join(p.read_text() for p in d.glob("slurm-*.out"))
    assert "resumed from step" in logs
