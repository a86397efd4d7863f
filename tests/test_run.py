"""End-to-end runs: what a run directory holds, NaN handling, a loop that never blocks on the
device, and sampling from a run directory. Kills, preemption and damage are tests/faults; bad
input is tests/test_bad_input.py."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from helpers import TINY_RUN, metrics
from helpers import gptjax_cli as gptjax

from gptjax import checkpoint, run, rundir
from gptjax.config import load_train_config
from gptjax.rundir import RunDir

TINY = {**TINY_RUN, "steps": 20, "eval_every": 10, "checkpoint_every": 5, "sample_tokens": 20}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def final_params(run_dir, step):
    cfg = RunDir(run_dir).read_config()
    from gptjax import sharding, train

    tr = train.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", 10, None, read_only=True)
    try:
        state, meta = ckpts.restore(tr.abstract_state, step=step)
    finally:
        ckpts.close()
    assert meta["step"] == step
    return jax.device_get(state["params"])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # The GPU flag profile parses on CPU and changes nothing there: run.json shows it reached XLA_FLAGS.
    out = gptjax("train", d / "tiny.yaml", "--run-dir", d / "run", "--no-progress", "--xla-profile", "gpu")
    return d / "run", out


def test_run_directory_holds_what_was_promised(full_run):
    run_dir, out = full_run
    for name in ("config.yaml", "run.json", "metrics.jsonl", "tokenizer.json", "checkpoints", "tensorboard",
                 "samples/step_20.txt"):
        assert (run_dir / name).exists(), name
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for r in rows:
        for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
            assert math.isfinite(r[key]) and (r[key] > 0 or key == "loss"), (key, r)
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    info = json.loads((run_dir / "run.json").read_text())
    assert {"git_commit", "versions", "host", "start_time"} <= set(info)
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in info["xla_flags"].split()
    assert info["peak_flops"] == {"per_device": 1.0e11, "source": "configured"}
    assert info["attention"] == {"impl": "einsum", "reason": "auto on CPU: the einsum path is the faster one there"}
    assert info["starts"][-1]["attention"] == info["attention"]
    assert load_train_config(str(run_dir / "config.yaml")).model.d_model == 32


def _in_process_cfg(tmp_path, **changes):
    data = {**TINY, **changes}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_train_config(str(path))


@pytest.fixture
def cpu_transfer_guard(monkeypatch):
    """Make jax.transfer_guard_device_to_host bite on CPU too. CPU arrays live in host memory,
    so JAX never checks the guard for them; every device-to-host read goes through
    ArrayImpl._value, which we make honour the guard in force on the calling thread."""
    from jax._src import array as array_lib
    from jax._src import config as config_lib

    original = array_lib.ArrayImpl._value

    def guarded(self):
        if config_lib.transfer_guard_device_to_host.value in ("disallow", "disallow_explicit", "log"):
            raise RuntimeError(f"Disallowed device-to-host transfer of {self.aval}")
        return original.fget(self)

    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(guarded))


def test_training_loop_never_blocks_on_the_device(tmp_path, cpu_transfer_guard):
    # The guard really catches a host read (else this test could not fail)...
    with jax.transfer_guard_device_to_host("disallow"), pytest.raises(RuntimeError, match="Disallowed"):
        float(jnp.ones(()) + 1)
    # ...and the whole run passes under it: only the step-late metrics read, eval and checkpoint
    # saves opt in.
    cfg = _in_process_cfg(tmp_path, steps=6, eval_every=3, checkpoint_every=3)
    with jax.transfer_guard_device_to_host("disallow"):
        result = run.train_run(cfg, tmp_path / "run", progress=False)
    assert result.final_step == 6 and result.val_loss is not None


def test_nan_on_a_checkpoint_step_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _in_process_cfg(tmp_path, faults={"nan_at_step": 10})
    with pytest.raises(run.RunStopped, match="non-finite loss at step 10.*last good checkpoint is step 5"):
        run.train_run(cfg, tmp_path / "run", progress=False)
    ckpts = checkpoint.Checkpoints(tmp_path / "run" / "checkpoints", 10, None, read_only=True)
    assert ckpts.all_steps() == [5]
    ckpts.close()
    model, _, _ = rundir.load_model(tmp_path / "run")
    assert np.isfinite(np.asarray(model(jnp.zeros((1, 4), jnp.int32)))).all()


def test_nan_skip_policy_drops_the_update_inside_the_step(tmp_path):
    cfg = _in_process_cfg(tmp_path, faults={"nan_at_step": 10}, nan_policy="skip")
    result = run.train_run(cfg, tmp_path / "run", progress=False)
    assert result.final_step == 20
    rows = metrics(tmp_path / "run")
    assert math.isnan(rows[9]["loss"]) and all(math.isfinite(r["loss"]) for r in rows if r["step"] != 10)
    model, _, _ = rundir.load_model(tmp_path / "run")
    assert np.isfinite(np.asarray(model(jnp.zeros((1, 4), jnp.int32)))).all()


def test_sample_and_from_pretrained_read_a_run_directory(full_run):
    run_dir, _ = full_run
    args = ["sample", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0"]
    a, b = gptjax(*args).stdout, gptjax(*args).stdout
    assert a == b and a.startswith("ROMEO:") and len(a.rstrip("\n")) == len("ROMEO:") + 12
    import gptjax as package

    model = package.from_pretrained(run_dir)
    assert model(jnp.zeros((1, 3), jnp.int32)).shape == (1, 3, 65)
