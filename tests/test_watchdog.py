"""The progress watchdog (training/watchdog.py): a hang ends the process with exit code 3 and every
thread's stack; the launchers restart it, and the restarted run finishes with the losses of a run
that never hung."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
from helpers import TINY_RUN, losses
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError, WatchdogConfig
from gptjax.errors import EXIT_HUNG
from gptjax.training.watchdog import MIN_TIMEOUT_S, Watchdog

TINY = {**TINY_RUN, "sample_tokens": 0}  # config_file (conftest)


def test_the_automatic_timeout_scales_with_the_step_time_after_warm_up(tmp_path):
    dog = Watchdog(WatchdogConfig(startup_s=900.0), tmp_path, say=print)
    assert dog.step_timeout() == 900.0  # nothing timed yet: the start-up budget
    for step, seconds in enumerate([60.0, 50.0, 40.0, 2.0, 3.0, 2.5], 1):  # compile and warm-up first
        dog.step_done(step, seconds)
    assert dog.step_timeout() == MIN_TIMEOUT_S  # 20 x 2.5 s is below the floor
    for step in range(7, 20):
        dog.step_done(step, 30.0)
    assert dog.step_timeout() == 20 * 30.0
    dog.phase("checkpoint save")  # a save gets the start-up budget, the next step the step timeout again
    assert dog._budget == 900.0
    dog.training()
    assert dog._budget == 600.0
    fixed = Watchdog(WatchdogConfig(timeout_s=7.0, startup_s=99.0), tmp_path, say=print)
    assert fixed.step_timeout() == 7.0
    fixed.training()  # the first step compiles: the start-up budget, even with a fixed timeout
    assert fixed._budget == 99.0
    fixed.step_done(1, None)
    assert fixed._budget == 7.0
    with pytest.raises(ConfigError, match="WatchdogConfig.timeout_s = 0 is invalid"):
        WatchdogConfig(timeout_s=0)


HANG = textwrap.dedent("""
    import sys, time
    from gptjax.config import WatchdogConfig
    from gptjax.training.watchdog import Watchdog

    def blocked_in_a_read():
        time.sleep(600)

    with Watchdog(WatchdogConfig(timeout_s=1.0, startup_s=30.0), sys.argv[1], say=print,
                  before_exit=lambda: print("released", flush=True), check_every_s=0.1) as dog:
        dog.step_done(7, 0.1)
        blocked_in_a_read()
""")


def test_a_hang_ends_the_process_with_code_3_and_every_threads_stack(tmp_path):
    out = subprocess.run([sys.executable, "-c", HANG, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_HUNG == 3
    assert re.search(r"watchdog: no step completed in 1 s \(limit 1 s, .*last completed step 7; every thread's "
                     r"stack is in .*watchdog-\d{8}-\d{6}\.txt; exiting with code 3", out.stdout), out.stdout
    assert out.stdout.rstrip().endswith("released")  # the run directory's lock is given back first
    report = next(tmp_path.glob("watchdog-*.txt")).read_text()
    assert "last completed step: 7" in report and "blocked_in_a_read" in report
    assert "gptjax-watchdog" in report or "Thread" in report  # every thread, the watchdog's own included


@pytest.mark.slow
@pytest.mark.workflow
def test_a_hung_two_process_run_is_restarted_and_finishes_as_if_it_never_hung(config_file, tmp_path):
    """Both processes' data source blocks before step 5 (faults.hang_at_step, once): their
    watchdogs fire after watchdog.timeout_s, `gptjax launch local` restarts the job, which resumes
    from step 4's checkpoint; the losses equal an uninterrupted one-process run's."""
    common = ["steps=8", "checkpoint_every=4", "eval_every=8"]
    reference = tmp_path / "reference"
    gptjax("train", config_file, *common, "--run-dir", reference, "--no-progress")
    run = tmp_path / "run"
    out = gptjax("launch", "local", config_file, *common, "faults.hang_at_step=5", "watchdog.timeout_s=4",
                 "--run-dir", run, "--processes", 2, "--devices-per-process", 4, timeout=600)
    fired = re.findall(r"watchdog: no step completed in (\d+) s \(limit 4 s", out.stderr)
    assert fired and all(4 <= int(s) <= 6 for s in fired), out.stderr[-3000:]
    assert "the job hung (exit code 3); restarting it from its last checkpoint (retry 1 of 3)" in out.stderr
    assert "resumed from step 4" in out.stderr
    assert list(run.glob("watchdog-*.txt"))
    assert json.loads((run / "result.json").read_text())["status"] == "finished"
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


@pytest.mark.slow
@pytest.mark.workflow
def test_the_sweep_runner_restarts_a_hung_run_and_records_it(config_file, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: hang\nbase: {config_file}\noverrides: {{steps: 6, checkpoint_every: 3, eval_every: 6, "
                     "faults.hang_at_step: 4, watchdog.timeout_s: 4}\ngrid: {seed: [0]}\n")
    out = gptjax("sweep", "run", sweep, "--run-dir", tmp_path / "runs", "--no-progress", timeout=600)
    assert "hung (exit code 3); restarting it from its last checkpoint (retry 1 of 3)" in out.stderr
    manifest = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert list(manifest["retries"].values()) == [1]
    (run,) = [r["run_dir"] for r in manifest["runs"]]
    assert json.loads(open(f"{run}/result.json").read())["status"] == "finished"
