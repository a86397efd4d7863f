"""End-to-end runs: what a run directory holds, NaN handling, a loop that never blocks on the
device, and sampling from a run directory. Kills, preemption and damage are tests/faults; bad
input is tests/test_bad_input.py."""

import json
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from helpers import TINY_RUN, metrics
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError
from gptjax.config_files import load_train_config
from gptjax.interop import runs
from gptjax.store import checkpoint
from gptjax.store.rundir import RunDir
from gptjax.training import fault_hooks, loop

TINY = {**TINY_RUN, "steps": 20, "eval_every": 10, "checkpoint_every": 5, "sample_tokens": 20}


def final_params(run_dir, step):
    cfg = RunDir(run_dir).read_config()
    from gptjax.runtime import sharding
    from gptjax.training import trainer

    tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
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


@pytest.mark.slow
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
    assert {"git_commit", "versions", "host", "python", "start_time"} <= set(info)
    # The versions this run used, whichever lane runs it.
    assert info["versions"]["jax"] == jax.__version__ and info["python"] == platform.python_version()
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


@pytest.mark.slow
def test_training_loop_never_blocks_on_the_device(tmp_path, cpu_transfer_guard):
    # The guard really catches a host read (else this test could not fail)...
    with jax.transfer_guard_device_to_host("disallow"), pytest.raises(RuntimeError, match="Disallowed"):
        float(jnp.ones(()) + 1)
    # ...and the whole run passes under it: only the step-late metrics read, eval and checkpoint
    # saves opt in.
    cfg = _in_process_cfg(tmp_path, steps=6, eval_every=3, checkpoint_every=3)
    with jax.transfer_guard_device_to_host("disallow"):
        result = loop.train_run(cfg, tmp_path / "run", progress=False)
    assert result.final_step == 6 and result.val_loss is not None


@pytest.mark.slow
def test_nan_on_a_checkpoint_step_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _in_process_cfg(tmp_path, faults={"nan_at_step": 10})
    with pytest.raises(loop.RunStopped, match="non-finite loss at step 10.*last good checkpoint is step 5"):
        loop.train_run(cfg, tmp_path / "run", progress=False)
    ckpts = checkpoint.Checkpoints(tmp_path / "run" / "checkpoints", 10, None, read_only=True)
    assert ckpts.all_steps() == [5]
    ckpts.close()
    model, _, _ = runs.load_model(tmp_path / "run")
    assert np.isfinite(np.asarray(model(jnp.zeros((1, 4), jnp.int32)))).all()


@pytest.mark.slow
def test_nan_skip_policy_drops_the_update_inside_the_step(tmp_path):
    cfg = _in_process_cfg(tmp_path, faults={"nan_at_step": 10}, nan_policy="skip")
    result = loop.train_run(cfg, tmp_path / "run", progress=False)
    assert result.final_step == 20
    rows = metrics(tmp_path / "run")
    assert math.isnan(rows[9]["loss"]) and all(math.isfinite(r["loss"]) for r in rows if r["step"] != 10)
    model, _, _ = runs.load_model(tmp_path / "run")
    assert np.isfinite(np.asarray(model(jnp.zeros((1, 4), jnp.int32)))).all()


@pytest.mark.slow
def test_sample_and_from_pretrained_read_a_run_directory(full_run):
    run_dir, _ = full_run
    args = ["sample", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0"]
    a, b = gptjax(*args).stdout, gptjax(*args).stdout
    assert a == b and a.startswith("ROMEO:") and len(a.rstrip("\n")) == len("ROMEO:") + 12
    import gptjax as package

    model = package.from_pretrained(run_dir)
    assert model(jnp.zeros((1, 3), jnp.int32)).shape == (1, 3, 65)


def test_gptjax_sample_with_its_defaults_writes_the_end_of_run_sample(full_run):
    # One set of sampling defaults (config.SAMPLE): the command, with nothing but the length and the
    # run's seed, continues the same prompt into the same text the run wrote at its end.
    run_dir, _ = full_run
    written = (run_dir / "samples" / "step_20.txt").read_text()
    out = gptjax("sample", run_dir, "--max-new-tokens", TINY["sample_tokens"], "--no-stream").stdout
    assert out == "\n" + written + "\n"


# --- exact accounting ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resume_with_another_batch_size_counts_what_ran_and_sees_each_example_once(tmp_path, monkeypatch):
    from gptjax.data import loader
    from gptjax.model import counting

    seen = {}
    original = loader.TrainBatches.at

    def recording(self, first):
        rows = original(self, first)
        seen[first] = rows
        return rows

    monkeypatch.setattr(loader.TrainBatches, "at", recording)
    common = {"eval_every": 100, "checkpoint_every": 4, "sample_tokens": 0}
    loop.train_run(_in_process_cfg(tmp_path, steps=4, **common), tmp_path / "run", progress=False)
    resumed = _in_process_cfg(tmp_path, steps=7, **common, data={**TINY["data"], "batch_size": 16})
    result = loop.train_run(resumed, tmp_path / "run", progress=False)
    interrupted, seen = dict(seen), {}
    assert sorted(interrupted) == [0, 8, 16, 24, 32, 48, 64]  # the data position is the example reached
    # An uninterrupted run over the same 80 examples (10 steps of 8) sees exactly those rows.
    loop.train_run(_in_process_cfg(tmp_path, steps=10, **common), tmp_path / "reference", progress=False)
    np.testing.assert_array_equal(np.concatenate([interrupted[k] for k in sorted(interrupted)]),
                                  np.concatenate([seen[k] for k in sorted(seen)]))
    out = json.loads((tmp_path / "run" / "result.json").read_text())
    tokens = (4 * 8 + 3 * 16) * 32
    assert result.progress.tokens == out["tokens"] == tokens and out["examples"] == 80 and out["steps"] == 7
    per_token = counting.flops_per_token(resumed.model, 32)
    assert out["flops"] == per_token * tokens and out["flops_per_token"] == per_token
    assert [r["tokens_seen"] for r in metrics(tmp_path / "run")] == [256, 512, 768, 1024, 1536, 2048, 2560]


def test_the_disk_full_fault_refuses_a_large_filesystem_before_anything_is_written(tmp_path, monkeypatch):
    # The chaos harness runs it on a small tmpfs (tests/faults); a user's disk is never filled.
    monkeypatch.setattr(fault_hooks, "FILL_LIMIT", 0)
    cfg = _in_process_cfg(tmp_path, faults={"fill_disk_at_step": 2})
    with pytest.raises(ConfigError, match=r"faults.fill_disk_at_step: .* MiB free; .* at most 0 MiB"):
        loop.train_run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_resume_with_another_sequence_length_is_refused(tmp_path):
    loop.train_run(_in_process_cfg(tmp_path, steps=3, checkpoint_every=3, sample_tokens=0), tmp_path / "run",
                  progress=False)
    shorter = _in_process_cfg(tmp_path, steps=6, data={**TINY["data"], "seq_len": 16})
    with pytest.raises(ConfigError, match=r"data.seq_len: 32 in .*config.yaml, 16 now"):
        loop.train_run(shorter, tmp_path / "run", progress=False)


def test_checkpoints_from_before_the_counts_resume_with_counts_from_their_config():
    cfg = load_train_config(None, ["model.vocab_size=65", "model.max_seq_len=32", "model.d_model=32",
                                   "model.n_layers=2", "model.n_heads=4", "data.batch_size=8"])
    meta = {"step": 5, "config": cfg.to_dict()}
    position = loop.Progress.restored(meta)
    from gptjax.model import counting

    assert (position.step, position.examples, position.tokens) == (5, 40, 40 * 32)
    assert position.flops == 40 * 32 * counting.flops_per_token(cfg.model, 32)
    assert loop.Progress.restored({**meta, "progress": {"step": 5, "examples": 1, "tokens": 2, "flops": 3.0}}) == \
        loop.Progress(5, 1, 2, 3.0)


# --- held-out sets and tasks measured during training ---------------------------------------------

MC = [{"context": "ROMEO: I love", "choices": [" thee", " xq"], "label": 0},
      {"context": "JULIET: Good", "choices": [" night", " zzz"], "label": 0},
      {"context": "First Citizen:", "choices": ["\nBefore", "\nqqq"], "label": 1}]


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """6 steps with two held-out sets (one within a single window) and a multiple-choice task."""
    d = tmp_path_factory.mktemp("evals")
    (d / "short.txt").write_text("ROMEO:\nWhat light through yonder")  # 32 characters: one window of 33
    (d / "long.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 12)
    (d / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MC))
    cfg = {**TINY, "steps": 6, "eval_every": 3, "checkpoint_every": 3, "sample_tokens": 0,
           "eval": {"sets": {"short": "short.txt", "long": "long.txt"},
                    "tasks": [{"task": "mc", "data": "mc.jsonl"}], "tasks_every": 3}}
    (d / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = gptjax("train", d / "tiny.yaml", "--run-dir", d / "run", "--no-progress")
    return d, out


@pytest.mark.slow
def test_eval_sets_and_tasks_are_in_the_metrics_and_the_result(eval_run):
    d, _ = eval_run
    rows = metrics(d / "run")
    measured = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in measured] == [3, 6]
    for r in measured:
        for key in ("eval/short/loss", "eval/short/bpb", "eval/long/loss", "eval/long/bpb", "eval/mc/acc"):
            assert math.isfinite(r[key]), (key, r)
        # One byte per character here: bits per byte is the loss in bits.
        assert r["eval/long/bpb"] == pytest.approx(r["eval/long/loss"] / math.log(2), rel=1e-12)
    evals = json.loads((d / "run" / "result.json").read_text())["evals"]
    assert set(evals) == {"short", "long", "mc"} and all(e["step"] == 6 for e in evals.values())
    assert evals["long"]["loss"] == measured[-1]["eval/long/loss"] and evals["mc"]["items"] == 3


@pytest.mark.slow
def test_an_eval_set_scores_as_gptjax_eval_does(eval_run, tmp_path):
    d, _ = eval_run
    final = metrics(d / "run")[-1]
    # One window holds the whole short text: the trainer's sharded eval step and the evaluation
    # scorer (another program, another batch layout) must give the same loss and bits per byte.
    out = gptjax("eval", d / "run", "--task", "perplexity", "--data", d / "short.txt", "--output", tmp_path / "p.json")
    theirs = json.loads((tmp_path / "p.json").read_text())["results"]["perplexity"]
    assert theirs["tokens"] == 31 and theirs["bytes"] == 31  # every character but the first
    assert final["eval/short/loss"] == pytest.approx(theirs["nll_per_token"], rel=1e-5)
    assert final["eval/short/bpb"] == pytest.approx(theirs["bits_per_byte"], rel=1e-5)
    mc = gptjax("eval", d / "run", "--task", "mc", "--data", d / "mc.jsonl", "--output", tmp_path / "mc.json")
    assert out.returncode == mc.returncode == 0
    assert final["eval/mc/acc"] == json.loads((tmp_path / "mc.json").read_text())["results"]["mc"]["acc"]


@pytest.mark.slow
def test_a_run_reports_its_start_progress_and_end_in_plain_lines(eval_run):
    _, out = eval_run
    assert "model: 20,256 parameters (17,152 non-embedding); 8 cpu device(s), mesh data=8 fsdp=1 tensor=1" in out.stderr
    assert "budget: 6 steps x 8 sequences x 32 tokens = 256 tokens/step; 1.54K tokens" in out.stderr
    progress = [line for line in out.stderr.splitlines() if line.startswith("step ") and "/6 (" in line]
    assert [line.split()[1] for line in progress] == [f"{s}/6" for s in range(1, 7)]
    assert all(" eta " in line and " tok/s " in line for line in progress)
    val = metrics(eval_run[0] / "run")[-1]["val_loss"]
    assert out.stdout.strip().startswith(f"finished at step 6, val_loss {val:.4f} (step 6)")


@pytest.mark.slow
def test_a_sigterm_during_evaluation_saves_and_the_resume_evaluates_again(eval_run, tmp_path):
    d, _ = eval_run
    cfg = yaml.safe_load((d / "tiny.yaml").read_text())
    cfg["eval"] = {"sets": {k: str(d / v) for k, v in cfg["eval"]["sets"].items()},
                   "tasks": [{"task": "mc", "data": str(d / "mc.jsonl")}], "tasks_every": 3}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", tmp_path / "tiny.yaml", "--run-dir", tmp_path / "run", "--no-progress"]
    out = gptjax(*args, "faults.kill_at_step=3", "faults.kill_during=eval", "faults.kill_signal=SIGTERM")
    assert "received SIGTERM during the evaluation of step 3: saved step 3" in out.stderr
    assert out.stdout.startswith("stopped at step 3 (checkpoint at 3): stopped by SIGTERM during the evaluation")
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]  # nothing half-done is logged
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "stopped"
    resumed = gptjax(*args)
    assert "resumed from step 3" in resumed.stderr
    rows, reference = metrics(tmp_path / "run"), metrics(d / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for mine, theirs in zip(rows, reference):  # the same run as one never interrupted
        assert {k: v for k, v in mine.items() if k not in ("tokens_per_sec", "mfu")} == \
            {k: v for k, v in theirs.items() if k not in ("tokens_per_sec", "mfu")}


@pytest.mark.slow
@pytest.mark.parametrize("phase, step", [("start", 0), ("end", 6)])
def test_a_sigterm_at_any_moment_ends_with_a_documented_exit(eval_run, tmp_path, phase, step):
    """A SIGTERM as the process starts (before anything is written) or after the last checkpoint
    (during the end-of-run writes) was outside the loop's handler and ended the process with -15
    (issue 22's chaos table). Now: at the start, the first step runs, saves and the run stops (exit
    0); at the end, the run finishes without its sample (exit 0), its result written."""
    d, _ = eval_run
    cfg = yaml.safe_load((d / "tiny.yaml").read_text())
    cfg["eval"] = {"sets": {k: str(d / v) for k, v in cfg["eval"]["sets"].items()}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = gptjax("train", tmp_path / "tiny.yaml", "--run-dir", tmp_path / "run", "--no-progress",
                 f"faults.kill_at_step={step}", f"faults.kill_during={phase}", "faults.kill_signal=SIGTERM",
                 check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    if phase == "start":
        # Heard in the first step's flags, read after the second is dispatched (the loop never waits).
        assert result["status"] == "stopped" and result["steps"] <= 2
        assert f"received SIGTERM: saved step {result['steps']}, exiting" in out.stderr
    else:
        assert result["status"] == "finished" and result["steps"] == 6
        assert "received SIGTERM after the last step was saved: finishing without the sample" in out.stderr
        assert not list((tmp_path / "run" / "samples").glob("*"))
