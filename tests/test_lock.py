"""One writer per run directory (store/lock.py): a second process is refused at once naming the
holder, and a killed holder's lock is taken over, on a local directory (flock) and on s3:// (a
lease, against moto's server); two `gptjax train` commands on one directory leave one run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import TINY_RUN, metrics
from helpers import gptjax_cli as gptjax

from gptjax.store import lock as lock_lib
from gptjax.store.lock import RunDirBusy, RunLock

TINY = {**TINY_RUN, "sample_tokens": 0}  # config_file (conftest)

pytestmark = pytest.mark.xdist_group("object_store")  # one S3 server per worker

HOLD = ("import sys, time\nfrom gptjax.store.lock import RunLock\n"
        "with RunLock(sys.argv[1], lease_s=float(sys.argv[2]), settle_s=0.2):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")


def _holder(run_dir, lease_s=60.0):
    """Another process holding run_dir's lock, once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(lease_s)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _refused_naming(run_dir, proc, **options):
    with pytest.raises(RunDirBusy) as e:
        with RunLock(run_dir, settle_s=0.2, **options):
            pass
    message = str(e.value)
    assert f"host {socket.gethostname()}, process {proc.pid}, started 20" in message, message
    assert "one run directory has one writer" in message


def test_a_local_lock_refuses_a_second_writer_and_frees_when_its_holder_is_killed(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        _refused_naming(tmp_path / "run", proc)
    finally:
        proc.kill()
        proc.wait()
    with RunLock(tmp_path / "run") as taken:  # the kernel dropped the dead holder's flock
        assert json.loads((tmp_path / "run" / "lock.json").read_text())["pid"] == os.getpid() == taken.holder["pid"]
    with RunLock(tmp_path / "run"):  # released on exit: the next writer takes it
        pass


@pytest.fixture
def s3(object_store_servers):
    return object_store_servers  # conftest: one pair per worker


@pytest.mark.slow
def test_an_s3_lease_refuses_a_live_holder_and_is_taken_from_a_dead_one(s3):
    url = f"s3://{s3.BUCKET}/lease/run"
    proc = _holder(url, lease_s=3.0)
    try:
        time.sleep(2.5)  # past one renewal: a live holder keeps its lease fresh
        _refused_naming(url, proc, lease_s=3.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed on this host: its process is gone, so the lease is taken at once.
    start = time.monotonic()
    with RunLock(url, lease_s=3.0, settle_s=0.2):
        assert json.loads(s3.read(f"{url}/lock.json"))["pid"] == os.getpid()
        assert time.monotonic() - start < 2.0
    assert f"{url}/lock.json" not in s3.objects(url)  # released: deleted


@pytest.mark.slow
def test_an_s3_lease_left_unrenewed_by_another_host_is_waited_out_then_taken(s3):
    url = f"s3://{s3.BUCKET}/lease/other-host"
    now = time.time()
    s3.write(f"{url}/lock.json", json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started": "earlier",
                                             "renewed": now - 50, "expires": now + 2}).encode())
    start = time.monotonic()
    with RunLock(url, lease_s=60.0, settle_s=0.2):
        assert time.monotonic() - start >= 1.5  # waited for the expiry
    fresh = {"host": "elsewhere", "pid": 1, "token": "y", "started": "2026-12-07T03:00:00+00:00",
             "renewed": time.time(), "expires": time.time() + 60}
    s3.write(f"{url}/lock.json", json.dumps(fresh).encode())
    with pytest.raises(RunDirBusy, match="host elsewhere, process 1, started 2026-12-07T03:00:00"):
        with RunLock(url, settle_s=0.2):
            pass


def test_two_writers_that_both_saw_no_lease_leave_one(tmp_path, monkeypatch):
    """The read-back after SETTLE_S: the writer whose lease landed last keeps it."""
    store = {}
    monkeypatch.setattr(lock_lib.paths, "is_remote", lambda p: True)
    monkeypatch.setattr(lock_lib.paths, "read_text", lambda p: store[str(p)] if str(p) in store else
                        (_ for _ in ()).throw(FileNotFoundError(p)))
    first, second = RunLock("gs://b/run", settle_s=0.0), RunLock("gs://b/run", settle_s=0.0)

    def write(p, text):  # the second writer's lease lands while the first settles
        store[str(p)] = text
        if json.loads(text)["token"] == first.holder["token"]:
            store[str(p)] = json.dumps({**second.holder, "renewed": time.time(), "expires": time.time() + 60})
    monkeypatch.setattr(lock_lib.paths, "write_text", write)
    with pytest.raises(RunDirBusy, match=f"process {os.getpid()}"):
        first.__enter__()


@pytest.mark.slow
def test_a_second_gptjax_train_on_one_run_directory_is_refused(config_file, tmp_path):
    """Issue 22: two trains started a second apart both trained (metrics rows doubled, the second
    died on Orbax's StepAlreadyExistsError). Now the second exits 2 naming the first."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "gptjax.cli", "train", str(config_file), "--run-dir", str(run_dir), "--no-progress",
            "steps=40", "checkpoint_every=10", "eval_every=20"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "lock.json").exists() or not (run_dir / "lock.json").read_text():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = gptjax(*args[3:], check=False)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"another process is training into this run directory (host {socket.gethostname()}, " \
           f"process {first.pid}, started" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert [r["step"] for r in metrics(run_dir)] == sorted({r["step"] for r in metrics(run_dir)})
