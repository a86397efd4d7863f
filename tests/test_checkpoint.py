"""Orbax checkpoints: restore onto other meshes, and fallback from corrupted, truncated or linked ones."""

import logging
import os
import pathlib

import jax
import numpy as np
import pytest

from gptjax.config import DataConfig, MeshConfig, ModelConfig, TrainConfig
from gptjax.runtime import sharding
from gptjax.store import checkpoint, manifest
from gptjax.store.tensor_files import CheckpointError
from gptjax.training import trainer

CFG = TrainConfig(model=ModelConfig(vocab_size=64, max_seq_len=8, d_model=32, n_layers=2, n_heads=4, d_ff=64),
                  data=DataConfig(batch_size=8, tokenizer="char"), keep_last=5)


def trainer_on(mesh_cfg, n):
    return trainer.make_trainer(CFG, sharding.make_mesh(mesh_cfg, jax.devices()[:n]))


def bumped(state, delta):
    return {**state, "step": state["step"] + delta,
            "params": jax.tree.map(lambda x: x + delta, state["params"])}


@pytest.fixture
def saved(tmp_path):
    """Steps 1 and 2 written from an 8-device 2x2x2 mesh; returns (directory, host params by step)."""
    tr = trainer_on(MeshConfig(data=2, fsdp=2, tensor=2), 8)
    state = trainer.init_state(tr)
    ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", keep_last=5, keep_every=None)
    expected = {}
    for step in (1, 2):
        s = bumped(state, step)
        ckpts.save(step, s, {"step": step})
        expected[step] = jax.device_get(s["params"])
    ckpts.close()
    return tmp_path / "ckpt", expected


def restore(directory, mesh_cfg=MeshConfig(data=1), n=1):
    tr = trainer_on(mesh_cfg, n)
    ckpts = checkpoint.Checkpoints(directory, keep_last=5, keep_every=None)
    try:
        return ckpts.restore(tr.abstract_state)
    finally:
        ckpts.close()


def assert_params_equal(got, want):
    for a, b in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_cfg,n", [(MeshConfig(data=1, fsdp=4), 4), (MeshConfig(data=1), 1)])
def test_restore_onto_fewer_devices_is_exact(saved, mesh_cfg, n):
    directory, expected = saved
    state, meta = restore(directory, mesh_cfg, n)
    assert meta["step"] == 2
    assert_params_equal(state["params"], expected[2])
    up = state["params"]["blocks"]["mlp"]["up"]["kernel"]
    assert len(up.sharding.device_set) == n
    if n == 4:
        assert up.addressable_shards[0].data.shape == (2, 8, 64)  # really sharded over fsdp=4


def test_read_only_inspection_prints_no_orbax_notices(saved, caplog):
    """sample, eval and convert open run directories read-only on purpose; Orbax's notices that a
    read-only manager is read-only preceded every output. Other warnings still pass."""
    directory, _ = saved
    with caplog.at_level(logging.INFO):
        ckpts = checkpoint.Checkpoints(directory, keep_last=5, keep_every=None, read_only=True)
        assert ckpts.latest_step() == 2
        ckpts.close()
        logging.getLogger("absl").warning("another warning")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in messages if "read only" in m or "read_only" in m], messages
    assert "another warning" in messages


def _data_files(step_dir: pathlib.Path):
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and "ocdbt.process_0/d" in str(p))


def test_every_committed_step_has_a_manifest(saved):
    directory, _ = saved
    for step in (1, 2):
        assert manifest.verify(directory / str(step)) is None


def test_flipped_byte_falls_back_to_the_previous_step(saved, capsys):
    directory, expected = saved
    chunk = _data_files(directory / "2")[0]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    state, meta = restore(directory)
    assert meta["step"] == 1
    assert_params_equal(state["params"], expected[1])
    assert "step 2 is unusable" in capsys.readouterr().err
    # The bad step is set aside, so the resumed run can save step 2 again.
    assert (directory / "2.unusable").is_dir() and not (directory / "2").exists()
    ckpts = checkpoint.Checkpoints(directory, keep_last=5, keep_every=None)
    ckpts.save(2, state, {"step": 2})
    ckpts.close()
    assert restore(directory)[1]["step"] == 2


def test_truncated_checkpoint_falls_back(saved, capsys):
    directory, expected = saved
    chunk = _data_files(directory / "2")[-1]
    with open(chunk, "r+b") as f:
        f.truncate(max(chunk.stat().st_size // 2, 1))
    _, meta = restore(directory)
    assert meta["step"] == 1
    assert "corrupted or truncated" in capsys.readouterr().err


def test_symlink_inside_a_checkpoint_is_refused(saved, tmp_path, capsys):
    directory, _ = saved
    chunk = _data_files(directory / "2")[0]
    foreign = tmp_path / "foreign"
    foreign.write_bytes(chunk.read_bytes())
    chunk.unlink()
    os.symlink(foreign, chunk)
    _, meta = restore(directory)
    assert meta["step"] == 1
    assert "symbolic link" in capsys.readouterr().err


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(saved):
    directory, _ = saved
    for step in (1, 2):
        (directory / str(step) / manifest.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="refusing to start from step 0"):
        restore(directory)
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["1.unusable", "2.unusable"]


def test_empty_directory_means_no_checkpoint(tmp_path):
    assert restore(tmp_path / "none") is None


@pytest.mark.slow
def test_keep_last_n_plus_every_k(tmp_path):
    tr = trainer_on(MeshConfig(data=1), 1)
    state = trainer.init_state(tr)
    ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", keep_last=2, keep_every=4)
    for step in range(1, 11):
        ckpts.save(step, state, {"step": step})
    ckpts.close()
    kept = checkpoint.Checkpoints(tmp_path / "ckpt", keep_last=2, keep_every=4)
    assert kept.all_steps() == [4, 8, 9, 10]
    kept.close()


def test_an_upload_waiting_for_a_save_that_failed_stops_when_the_failure_is_known(tmp_path, monkeypatch):
    # Orbax never creates the directory of a save that failed (a full disk): the s3 mirror's upload
    # of that step must not wait for it forever, or the run hangs instead of reporting the failure.
    import threading

    from gptjax.store.mirror import Mirror

    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "cache"))
    mirror = Mirror(tmp_path / "remote", 3, None, read_only=False)
    mirror.upload_when_committed(7)  # step 7's local save never commits
    waiting = threading.Thread(target=mirror.wait, kwargs={"abandoned": [7]}, daemon=True)
    waiting.start()
    waiting.join(timeout=30)
    assert not waiting.is_alive(), "Mirror.wait hung on the upload of a step whose save failed"
    assert mirror.committed_steps() == []
