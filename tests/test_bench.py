"""`gptjax bench`: every section runs on a tiny model and reports consistent figures; the PyTorch
side is the same architecture (its parameter count is ours, exactly). Times are not asserted."""

import json
import pathlib

import numpy as np
import pytest
import yaml
from helpers import TINY_RUN, reference
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError, ModelConfig, TrainConfig, from_dict
from gptjax.config_files import load_train_config
from gptjax.model import counting
from gptjax.tools import bench

NANOGPT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanogpt"
FAST = dict(repeats=2, steps=2, warmup=1, depths=(1, 2), prompt=4, new_tokens=4, gen_batch=(1, 2), data_batches=5)


def tiny(**model):
    return from_dict(TrainConfig, {**TINY_RUN, "model": {**TINY_RUN["model"], **model}})


@pytest.mark.torch
@pytest.mark.slow
def test_every_section_beside_transformers():
    reference("transformers")
    cfg = tiny()
    r = bench.run(cfg, bench.BenchOptions(vs_torch=True, **FAST), say=lambda _: None)
    t = r["train"]
    tokens = cfg.data.batch_size * cfg.resolved_seq_len
    assert t["tokens_per_s"] == pytest.approx(tokens / (t["step_ms"] / 1e3))
    flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len) * t["tokens_per_s"]
    # TINY_RUN's configured peak per device, times the devices its mesh spans (the 8 fake ones here)
    assert r["devices"] == 8 and t["mfu"] == pytest.approx(flops / (1.0e11 * 8))
    assert t["peak_flops"]["source"] == "configured"
    # The same architecture on the PyTorch side: transformers' GPT-2, parameter for parameter.
    assert t["torch"]["implementation"].startswith("transformers GPT2LMHeadModel")
    assert t["torch"]["params"] == counting.param_counts(cfg.model).total == r["params"]
    assert t["torch_ms_over_gptjax_ms"] == pytest.approx(t["torch"]["step_ms"] / t["step_ms"])
    assert [(row["n_layers"], row["scan_layers"]) for row in r["compile"]] == [(1, True), (1, False), (2, True),
                                                                               (2, False)]
    assert all(row["compile_s"] > 0 for row in r["compile"])
    none, full = r["memory"]
    assert (none["remat"], full["remat"]) == ("none", "full")
    assert full["argument_bytes"] == none["argument_bytes"]  # remat changes activations, not the state
    assert [row["batch"] for row in r["generate"]] == [1, 2]
    assert all(row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0 for row in r["generate"])
    assert r["data"]["tokens_per_s"] > 0
    json.dumps(r)  # the --output file
    table = bench.format_result(r)
    assert "PyTorch ms / gptjax ms" in table and "skipped" not in table


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(not NANOGPT.is_dir(), reason="the nanoGPT reference checkout is not beside this clone")
def test_the_real_nanogpt_builds_the_shakespeare_model():
    reference("torch")
    # The README's config on this session's 8 fake devices: a batch they divide (the model is unchanged).
    cfg = load_train_config("experiments/shakespeare_char.yaml", ["data.batch_size=16"])
    r = bench.run(cfg, bench.BenchOptions(sections=("train",), nanogpt=str(NANOGPT), vs_torch=True, repeats=1,
                                          steps=1, warmup=1), say=lambda _: None)
    assert r["train"]["torch"]["implementation"].startswith("nanoGPT model.py")
    assert r["train"]["torch"]["params"] == counting.param_counts(cfg.model).total


@pytest.mark.torch
def test_models_nanogpt_cannot_build_are_refused_with_the_reasons():
    reference("torch")
    cfg = tiny(position="rotary", n_kv_heads=2)
    with pytest.raises(ConfigError, match=r"position = 'rotary'.*multi-head attention"):
        bench.run(cfg, bench.BenchOptions(sections=("train",), nanogpt=str(NANOGPT), vs_torch=True, **FAST))
    with pytest.raises(ConfigError, match="sections memry: not among"):
        bench.BenchOptions(sections=("train", "memry"))
    with pytest.raises(ConfigError, match="--repeats = 0 must be >= 1"):
        bench.BenchOptions(repeats=0)


@pytest.mark.slow
def test_cli_writes_the_table_and_json(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))
    out = tmp_path / "bench.json"
    done = gptjax("bench", cfg, "--sections", "train,compile", "--repeats", "1", "--steps", "2", "--depths", "1",
                  "--output", out, "data.batch_size=16")
    r = json.loads(out.read_text())
    assert r["batch_size"] == 16 and r["train"]["step_ms"] > 0 and len(r["compile"]) == 2
    assert "train step" in done.stdout and "compile" in done.stdout
    bad = gptjax("bench", cfg, "--sections", "train,speed", check=False)
    assert bad.returncode == 2 and "speed: not among train, compile, memory, generate, data" in bad.stderr


@pytest.mark.slow
def test_the_accelerator_check_runs_here_on_a_tiny_model(tmp_path):
    """benchmarks/accelerator_check.sh is run once a GPU is lent, as it is: --smoke keeps its code
    path (train MFU per attention path, agreement with the einsum reference, decode, memory
    against the plan) working on this machine's devices."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(root / "benchmarks" / "accelerator_check.sh"), "--smoke"], capture_output=True,
                         text=True, env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert [row["attention"] for row in r["train"]] == ["einsum", "xla"] and all(row["mfu"] > 0 for row in r["train"])
    # XLA's fused attention in bfloat16 against the float32 einsum reference: close, not equal.
    assert r["attention"]["impl"] == "xla" and 0 < r["attention"]["relative"] < 5e-2, r["attention"]
    assert [row["batch"] for row in r["decode"]] == [1, 8] and all(row["decode_tokens_per_s"] > 0 for row in r["decode"])
    assert r["memory"]["predicted_peak_bytes"] > 0 and "MFU" in out.stdout


def test_decode_is_timed_as_its_own_loop():
    """Decode speed comes from a timed loop of one-token steps that decodes what generate does
    (greedy), not from the whole call minus the prefill: on a busy 2-core machine the whole call's
    median once came out below the prefill's and printed 15,000,000,000 decode tokens/s."""
    from gptjax import generation
    from gptjax.model.gpt import init_model

    row = bench.generation_row(2, bench.BenchOptions(new_tokens=16), prefill_s=0.5, decode_s=0.4, full_s=0.45)
    assert row["decode_tokens_per_s"] == pytest.approx(2 * 16 / 0.4)
    assert row["prefill_tokens_per_s"] == pytest.approx(2 * 32 / 0.5)
    model = init_model(from_dict(ModelConfig, {**TINY_RUN["model"], "init_std": 0.5}), 0)  # positions matter
    prompts = np.random.default_rng(0).integers(0, 65, (2, 7))
    prefill, decode = bench._decode_programs(model, prompts, 9)
    chosen = np.asarray(decode(prefill()))
    expected = generation.generate(model, prompts.tolist(), 9, eos_token_id=None)
    assert chosen.tolist() == [row[7:] for row in expected]

