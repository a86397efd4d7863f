"""Run directories on object storage, for real: s3:// against moto's server, gs:// against
gcp-storage-emulator, both on 127.0.0.1. Train, SIGKILL mid-save, resume on a "fresh machine"
(empty local cache) with identical losses; a corrupted object falls back loudly; sampling changes
no object. Where the servers cannot start these tests skip loudly; GPTJAX_REQUIRE_OBJECT_STORE=1
(set by .ci/run) turns that into a failure."""

import json
import shutil

import numpy as np
import pytest
from helpers import TINY_RUN, losses
from helpers import gptjax_cli as gptjax

TINY = {**TINY_RUN, "steps": 12, "eval_every": 6, "checkpoint_every": 4, "sample_tokens": 5}

# One pair of servers per pytest worker: keep these tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("object_store")


@pytest.fixture
def servers(object_store_servers):
    return object_store_servers  # conftest: one pair per worker


@pytest.fixture(scope="module")
def local_reference(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    gptjax("train", config_file, "--run-dir", run_dir, "--no-progress")
    return run_dir


def _losses(servers, url):
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


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_token_files_prepared_to_object_storage_train_as_local_ones(servers, config_file, local_reference, tmp_path,
                                                                     scheme):
    """`gptjax data prepare --output URL` puts the token files in the bucket; `data.token_dir: URL`
    trains from them in place, with the losses of a run on the local corpus."""
    url = f"{scheme}://{servers.BUCKET}/tokens/{tmp_path.name}"
    env = {**servers.env, "GPTJAX_CACHE_DIR": str(tmp_path / "cache")}
    out = gptjax("data", "prepare", config_file, "--output", url, env=env)
    assert f"data.token_dir={url}" in out.stdout
    (local,) = (tmp_path / "cache" / "tokens").iterdir()
    for name in ("train.bin", "val.bin"):
        assert servers.read(f"{url}/{name}") == (local / name).read_bytes(), name
    meta = json.loads(servers.read(f"{url}/meta.json"))
    assert meta["max_id"] == {"train": 64, "val": 64} and meta["tokenizer"]["kind"] == "char"
    # A fresh machine with no token cache: everything is read from the bucket.
    shutil.rmtree(tmp_path / "cache")
    run = tmp_path / "run"
    gptjax("train", config_file, f"data.token_dir={url}", "--run-dir", run, "--no-progress", env=env)
    assert losses(run) == losses(local_reference)
    assert not (tmp_path / "cache" / "tokens").exists(), "the token files must be read in place, not copied"


@pytest.mark.slow
def test_a_resume_on_more_processes_reads_object_storage_tokens_in_the_global_order(servers, config_file, tmp_path):
    """Trained by one process from token files in a bucket, killed, resumed by two processes reading
    the same bucket: every step sees the batch of the uninterrupted run (its losses, to the 1e-5
    that one and two processes agree to), with no process holding a copy of the token files."""
    url = f"s3://{servers.BUCKET}/tokens/{tmp_path.name}"
    env = {**servers.env, "GPTJAX_CACHE_DIR": str(tmp_path / "cache")}
    gptjax("data", "prepare", config_file, "--output", url, env=env)
    shutil.rmtree(tmp_path / "cache")
    one_process = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    gptjax("train", config_file, f"data.token_dir={url}", "--run-dir", reference, "--no-progress", env=one_process)
    killed = gptjax("train", config_file, f"data.token_dir={url}", "--run-dir", resumed, "--no-progress",
                    "faults.kill_at_step=7", "faults.kill_during=step", env=one_process, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = gptjax("launch", "local", config_file, f"data.token_dir={url}", "--run-dir", resumed, "--processes", 2,
                 "--devices-per-process", 4, env=env)
    assert "resumed from step 4" in out.stderr + out.stdout, (out.stdout + out.stderr)[-2000:]
    rows, expected = losses(resumed), losses(reference)
    assert len(rows) == len(expected) == TINY["steps"]
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)
    assert not (tmp_path / "cache" / "tokens").exists(), "the token files must be read in place, not copied"


def test_remote_tokens_read_ranges_through_a_bounded_cache(servers, tmp_path):
    from gptjax.data import loader
    from gptjax.data.remote import RemoteTokens

    ids = np.random.default_rng(0).integers(0, 50_000, 10_000).astype(np.uint16)
    url = f"s3://{servers.BUCKET}/ranges/{tmp_path.name}/train.bin"
    servers.write(url, ids.tobytes())
    remote = RemoteTokens(url, np.uint16, cache_bytes=2048, block_bytes=1024)  # 512 tokens a block, 2 kept
    assert (len(remote), remote.max()) == (ids.size, int(ids.max()))
    assert remote.reads == 20 and remote.cached_bytes <= 2048
    for start, stop in [(0, 1), (511, 513), (1000, 4100), (9990, 10_000), (5, 5)]:
        np.testing.assert_array_equal(remote[start:stop], ids[start:stop])
    before = remote.reads
    np.testing.assert_array_equal(remote[9995:10_000], ids[9995:10_000])  # the last block read: from the cache
    assert remote.reads == before and remote.cached_bytes <= 2048
    with pytest.raises(TypeError, match="only contiguous slices"):
        remote[::2]
    # The loader is a function of (seed, example): rows split between two processes' readers
    # (each with its own cache) assemble the batch one local reader makes, in the same order.
    whole = loader.TrainBatches(ids, 16, 8, seed=3).at(40)
    halves = [loader.TrainBatches(RemoteTokens(url, np.uint16, cache_bytes=4096), 16, 8, seed=3, rows=rows).at(40)
              for rows in (np.arange(4), np.arange(4, 8))]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_prepare_refuses_an_unsupported_output_before_encoding(config_file, tmp_path):
    out = gptjax("data", "prepare", config_file, "--output", "ftp://host/tokens", check=False,
                 env={"GPTJAX_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 2 and "the scheme ftp:// is not supported; use a local path, gs:// or s3://" in out.stderr
    assert not (tmp_path / "tokens").exists()
