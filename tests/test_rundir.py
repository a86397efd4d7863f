"""A run directory is never damaged: config changes on resume, restore errors, read-only inspection."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from helpers import TINY_RUN, metrics, snapshot
from helpers import gptjax_cli as gptjax

from gptjax import cli
from gptjax.config import ConfigError
from gptjax.interop import runs
from gptjax.runtime import sharding
from gptjax.store import checkpoint, manifest
from gptjax.store.rundir import RunDir
from gptjax.training import resume, trainer

TINY = {**TINY_RUN, "steps": 20, "eval_every": 10, "checkpoint_every": 10, "sample_tokens": 5}




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`gptjax train tiny.yaml --run-dir r1`: steps 10 and 20 saved."""
    d = tmp_path_factory.mktemp("trained")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    gptjax("train", d / "tiny.yaml", "--run-dir", d / "r1", "--no-progress")
    return d / "tiny.yaml", d / "r1"


@pytest.fixture
def run_copy(trained, tmp_path):
    config, original = trained
    copy = tmp_path / "r1"
    shutil.copytree(original, copy, symlinks=True)
    return config, copy


@pytest.mark.slow
def test_a_mistyped_override_is_refused_and_the_original_command_resumes(run_copy, capsys):
    config, run_dir = run_copy
    before = snapshot(run_dir)
    assert cli.main(["train", str(config), "--run-dir", str(run_dir), "model.d_model=64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"model.d_model: 32 in {run_dir}/config.yaml, 64 now" in err
    assert "Nothing was changed" in err and "--run-dir NEW_DIR" in err
    assert snapshot(run_dir) == before, "a refused resume must not write, rename or delete anything"
    # The original command, asked for 10 more steps, continues from step 20 with nothing lost.
    out = gptjax("train", config, "--run-dir", run_dir, "--no-progress", "steps=30")
    assert "resumed from step 20" in out.stderr and "steps 20 -> 30" in out.stderr
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 31))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 30
    assert yaml.safe_load((run_dir / "config.0.yaml").read_text())["steps"] == 20
    assert yaml.safe_load((run_dir / "config.20.yaml").read_text())["steps"] == 30
    assert checkpoint.Checkpoints(run_dir / "checkpoints", 10, None, read_only=True).all_steps() == [10, 20, 30]


@pytest.mark.slow
@pytest.mark.parametrize("override,named", [
    ("optim.name=lion", "optim.name: 'adamw' in"),
    ("optim.grad_clip=null", "optim.grad_clip: 1.0 in"),  # same fields of the state, another tree
    ("model.activation=relu", "model.activation: 'gelu_tanh' in"),  # same shapes, another function
    ("model.param_dtype=bfloat16", "model.param_dtype: 'float32' in"),
    ("data.tokenizer=gpt2", "data.tokenizer: 'char' in"),
])
def test_changes_that_invalidate_the_state_are_refused_before_anything_is_written(run_copy, capsys, override,
                                                                                  named):
    config, run_dir = run_copy
    before = snapshot(run_dir)
    assert cli.main(["train", str(config), "--run-dir", str(run_dir), override, "--no-progress"]) == 2
    assert named in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_changes_that_keep_the_state_valid_are_allowed_and_recorded(run_copy):
    config, run_dir = run_copy
    changes = resume.check(RunDir(run_dir), _cfg(config, "steps=40", "eval_batch_size=128", "mesh.fsdp=2",
                                                 "optim.lr=1e-3", "model.remat=full", "log_every=2"))
    assert {c[0] for c in changes} == {"steps", "eval_batch_size", "mesh.fsdp", "optim.lr", "model.remat",
                                       "log_every"}


def _cfg(config, *overrides):
    from gptjax.config_files import load_train_config

    return load_train_config(str(config), list(overrides))


def _abstract_state(cfg):
    return trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1])).abstract_state


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError, OSError])
def test_an_interrupted_or_failing_restore_leaves_every_checkpoint_as_it_was(run_copy, monkeypatch, failure):
    config, run_dir = run_copy
    cfg = _cfg(config, "mesh.data=1")
    before = snapshot(run_dir)
    import orbax.checkpoint as ocp

    def broken(self, *args, **kwargs):
        raise failure("injected")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", broken)
    ckpts = RunDir(run_dir).checkpoints(cfg)
    expected = checkpoint.RestoreError if failure is OSError else failure
    with pytest.raises(expected):
        ckpts.restore(_abstract_state(cfg))
    ckpts.close()
    assert snapshot(run_dir) == before


def test_a_shape_mismatch_is_an_error_not_a_damaged_checkpoint(run_copy):
    config, run_dir = run_copy
    before = snapshot(run_dir)
    wrong = _cfg(config, "mesh.data=1", "model.d_ff=96")  # past the config check: straight to Orbax
    ckpts = RunDir(run_dir).checkpoints(wrong)
    with pytest.raises(checkpoint.RestoreError, match="passed its integrity check but could not be restored.*No "
                                                      "checkpoint was changed"):
        ckpts.restore(_abstract_state(wrong))
    ckpts.close()
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_restore_killed_by_sigkill_loses_nothing(run_copy):
    config, run_dir = run_copy
    before = snapshot(run_dir)
    # A resume whose process dies inside Orbax's restore (as an out-of-memory kill would).
    script = textwrap.dedent(f"""
        import os, signal
        import orbax.checkpoint as ocp
        from gptjax.training import loop
        from gptjax.config_files import load_train_config
        ocp.CheckpointManager.restore = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        loop.train_run(load_train_config({str(config)!r}, ["steps=30"]), {str(run_dir)!r}, progress=False)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert snapshot(run_dir) == before
    out = gptjax("train", config, "--run-dir", run_dir, "--no-progress", "steps=22")
    assert "resumed from step 20" in out.stderr


@pytest.mark.slow
def test_inspection_writes_nothing_even_past_a_damaged_checkpoint(run_copy, tmp_path):
    config, run_dir = run_copy
    # Damage step 20: inspection must skip it (loudly) and read step 10, renaming nothing.
    damaged = run_dir / "checkpoints" / "20" / manifest.MANIFEST
    damaged.write_text(damaged.read_text().replace('"', "'", 2))
    before = snapshot(run_dir)
    out = gptjax("sample", run_dir, "--prompt", "A", "--max-new-tokens", "4", "--temperature", "0")
    assert "checkpoint step 20 is unusable" in out.stderr and "skipping it (read-only)" in out.stderr
    gptjax("convert", run_dir, tmp_path / "hf", "--to", "hf")
    text = tmp_path / "text.txt"
    text.write_text((pathlib.Path(os.environ["GPTJAX_DATA_DIR"]) / "tinyshakespeare.txt").read_text()[:300])
    gptjax("eval", run_dir, "--task", "perplexity", "--data", text, "--no-progress")
    model, _, step = runs.load_model(run_dir)
    assert step == 10
    import gptjax as package

    assert np.isfinite(np.asarray(package.from_pretrained(run_dir)(jnp.zeros((1, 3), jnp.int32)))).all()
    assert snapshot(run_dir) == before


def test_inspection_never_reads_the_optimizer_state(run_copy):
    config, run_dir = run_copy
    # Without its optimizer state a checkpoint cannot resume, but its parameters still load.
    for step in ("10", "20"):
        shutil.rmtree(run_dir / "checkpoints" / step / "train")
    model, _, step = runs.load_model(run_dir)
    assert step == 20 and model.cfg.d_model == 32


def test_a_first_start_that_failed_early_can_be_run_again(tmp_path):
    """A run directory holding only what a run writes before its config.yaml (Orbax's checkpoints/
    folder, created before the weights are loaded) is a run to retry, not someone else's files."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "launch.json").write_text("{}")
    RunDir(run).check_usable()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds no gptjax run \(no config.yaml; it holds notes.txt\)"):
        RunDir(run).check_usable()
