"""Run directories on object storage, for real: s3:// against moto's server, gs:// against
gcp-storage-emulator, both on 127.0.0.1. Train, SIGKILL mid-save, resume on a "fresh machine"
(empty local cache) with identical losses; a corrupted object falls back loudly; sampling changes
no object. Where the servers cannot start these tests skip loudly; GPTJAX_REQUIRE_OBJECT_STORE=1
(set by .ci/run) turns that into a failure."""

import os
import shutil

import object_store
import pytest
from helpers import TINY_RUN, losses
from helpers import gptjax_cli as gptjax

TINY = {**TINY_RUN, "steps": 12, "eval_every": 6, "checkpoint_every": 4, "sample_tokens": 5}

# One pair of servers per pytest worker: keep these tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("object_store")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    why = object_store.unavailable()
    if why:
        if os.environ.get("GPTJAX_REQUIRE_OBJECT_STORE") == "1":
            pytest.fail(f"GPTJAX_REQUIRE_OBJECT_STORE=1 but the servers cannot start: {why}")
        pytest.skip(f"SKIPPING OBJECT-STORE TESTS: {why}")
    s = object_store.Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local_reference(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    gptjax("train", config_file, "--run-dir", run_dir, "--no-progress")
    return run_dir


def _losses(servers, url):
    import json

    return [json.loads(line)["loss"] for line in servers.read(f"{url}/metrics.jsonl").decode().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_train_kill_resume_corrupt_and_sample_on_object_storage(servers, config_file, local_reference, tmp_path,
                                                                scheme):
    url = f"{scheme}://{servers.BUCKET}/runs/{tmp_path.name}"
    env = {**servers.env, "GPTJAX_CACHE_DIR": str(tmp_path / "cache")}
    killed = gptjax("train", config_file, "--run-dir", url, "--no-progress", "faults.kill_at_step=8",
                    "faults.kill_during=save", env=env, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # A fresh machine: nothing staged locally, everything comes from the bucket.
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    resumed = gptjax("train", config_file, "--run-dir", url, "--no-progress", env=env)
    assert "resumed from step 4" in resumed.stderr, resumed.stderr[-2000:]
    assert _losses(servers, url) == losses(local_reference), "the resumed run must equal the uninterrupted one"
    objects = servers.objects(url)
    assert any(k.endswith("checkpoints/12/gptjax_manifest.json") for k in objects)
    assert any("/tensorboard/" in k for k in objects) and any(k.endswith("tokenizer.json") for k in objects)

    # Corrupt one data object of the newest step: inspection falls back to step 8, loudly, and
    # changes no object at all.
    victim = f"{scheme}://{servers.BUCKET}/" + sorted(k for k in objects if "/checkpoints/12/params/" in k
                                                       and "/d/" in k)[0]
    raw = bytearray(servers.read(victim))
    raw[len(raw) // 2] ^= 0x01
    servers.write(victim, bytes(raw))
    before = servers.objects(url)
    out = gptjax("sample", url, "--prompt", "A", "--max-new-tokens", "4", "--temperature", "0",
                 env={**env, "GPTJAX_CACHE_DIR": str(tmp_path / "cache2")})
    assert "checkpoint step 12 is unusable" in out.stderr and "does not match its sha256" in out.stderr
    assert servers.objects(url) == before, "sampling must not create, change or delete any object"

    # Training, unlike inspection, sets the damaged step aside and resumes from step 8.
    again = gptjax("train", config_file, "--run-dir", url, "--no-progress", "steps=14", env=env)
    assert "resumed from step 8" in again.stderr and "setting it aside as 12.unusable" in again.stderr


def test_launchers_accept_object_storage_run_directories(servers, config_file, capsys):
    from gptjax import cli

    assert cli.main(["launch", "tpu", str(config_file), "--tpu-name", "pod", "--zone", "z",
                     "--run-dir", f"gs://{servers.BUCKET}/runs/tpu", "--dry-run"]) == 0
    assert f"--run-dir gs://{servers.BUCKET}/runs/tpu" in capsys.readouterr().out
