"""`gptjax plan`: the sharded train step compiled ahead of time, per-device memory before submitting."""

import json

import jax
import pytest
import yaml
from helpers import gptjax_cli as gptjax
from helpers import require_libtpu

from gptjax.config import ConfigError, MeshConfig, TrainConfig, from_dict
from gptjax.model import counting, kernels
from gptjax.runtime import sharding
from gptjax.tools import plan
from gptjax.training import trainer

MODEL = {"vocab_size": 512, "max_seq_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256}


def config(mesh, **model):
    return from_dict(TrainConfig, {"model": {**MODEL, **model}, "data": {"batch_size": 16}, "mesh": mesh})


def test_replicated_figures_are_the_exact_counts():
    p = plan.make_plan(config({"data": 8}))
    n = counting.param_counts(config({"data": 8}).model, 64).total
    assert p.params == n and p.params_bytes == 4 * n
    # AdamW: two float32 moments per parameter, plus a few scalars (step counts, learning rate).
    assert 8 * n <= p.opt_state_bytes <= 8 * n + 64
    assert p.batch_bytes == 16 // 8 * 65 * 4


@pytest.mark.slow
def test_sharded_figures_agree_with_the_compiler():
    p = plan.make_plan(config({"data": 2, "fsdp": 4}))
    replicated = plan.make_plan(config({"data": 8}))
    assert p.params_bytes < replicated.params_bytes / 3  # the width is split four ways
    # What the compiled program takes as arguments is exactly what the shardings say: the state
    # (with its int32 step), the batch and one float32 stop flag per device, less the float32
    # learning-rate hyperparameter, which the step overwrites and jit therefore drops as unused.
    assert p.argument_bytes == p.params_bytes + p.opt_state_bytes + p.batch_bytes + 4 + 4 - 4
    assert p.alias_bytes >= p.params_bytes + p.opt_state_bytes  # the state is donated
    assert p.peak_bytes == p.argument_bytes + p.output_bytes - p.alias_bytes + p.temp_bytes


def test_collectives_follow_the_mesh():
    """Data parallelism sums gradients (all-reduce) and gathers nothing; FSDP gathers the weights
    (all-gather) and scatters their gradients. Counted from the optimized program."""
    data, fsdp = plan.make_plan(config({"data": 8})), plan.make_plan(config({"fsdp": 8}))
    assert data.collectives["all-reduce"] > 0 and data.collectives["all-gather"] == 0, data.collectives
    assert fsdp.collectives["all-gather"] > 0, fsdp.collectives
    assert set(data.collectives) == set(plan.COLLECTIVES)
    assert data.attention == {"impl": "einsum", "reason": "auto on CPU: the einsum path is the faster one there"}


def test_collective_counts_read_each_instruction_once():
    class Compiled:
        def as_text(self):
            return ("  %ag = f32[8,64]{1,0} all-gather(f32[1,64]{1,0} %p), replica_groups={{0,1}}\n"
                    "  %ags = (f32[1,64], f32[8,64]) all-gather-start(f32[1,64]{1,0} %q)\n"
                    "  %agd = f32[8,64]{1,0} all-gather-done((f32[1,64], f32[8,64]) %ags)\n"
                    "  %ar = f32[] all-reduce(f32[] %x), to_apply=%add\n"
                    "  %f = f32[8] fusion(f32[8] %all-gather.1), kind=kLoop\n")

    counts = plan.collective_counts(Compiled())
    assert counts == {"all-gather": 2, "all-reduce": 1, "reduce-scatter": 0, "collective-permute": 0,
                      "all-to-all": 0}


@pytest.mark.slow
def test_remat_shrinks_the_activations():
    deep = dict(n_layers=8, max_seq_len=64)
    none, full = plan.make_plan(config({"data": 8}, **deep)), plan.make_plan(config({"data": 8}, remat="full", **deep))
    assert full.temp_bytes < 0.8 * none.temp_bytes, (none.temp_bytes, full.temp_bytes)
    assert full.params_bytes == none.params_bytes


def test_unknown_accelerator_is_refused_before_compiling():
    with pytest.raises(ConfigError, match="--accelerator 'h1000' is not one of h100, h200"):
        plan.make_plan(config({"data": 8}), "h1000")


@pytest.mark.slow
def test_cli_plans_on_fake_devices_of_the_mesh_and_says_whether_it_fits(tmp_path):
    cfg = tmp_path / "big.yaml"
    # About 1.2 billion parameters: with AdamW state and gradients more than a 16 GiB TPU v5e
    # chip holds on one device, a quarter of it on a 4-way FSDP mesh. Nothing is allocated.
    cfg.write_text(yaml.safe_dump({"model": {"vocab_size": 50304, "max_seq_len": 128, "d_model": 6144,
                                             "n_layers": 2, "n_heads": 48}, "data": {"batch_size": 4}}))
    one = gptjax("plan", cfg, "--mesh", "data=1", "--accelerator", "tpu-v5e", "--output", tmp_path / "one.json",
                 check=False)
    assert one.returncode == 1, one.stderr
    assert "does NOT fit on TPU v5e 16 GiB" in one.stdout
    four = gptjax("plan", cfg, "--mesh", "fsdp=4", "--batch", "8", "--accelerator", "tpu-v5e",
                  "--output", tmp_path / "four.json")
    assert "fits on TPU v5e 16 GiB" in four.stdout and "(4 cpu devices)" in four.stdout
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "four.json"))
    assert a["fits"] is False and b["fits"] is True and b["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert b["batch_size"] == 8 and b["params"] == a["params"] > 1.1e9
    assert b["params_bytes"] < a["params_bytes"] / 3.9
    bad = gptjax("plan", cfg, "--mesh", "fsdp=four", check=False)
    assert bad.returncode == 2 and "--mesh 'fsdp=four': expected comma-separated data=N" in bad.stderr
    assert jax.device_count() == 8  # this process is untouched


@pytest.mark.slow
def test_fsdp_keeps_the_activations_batch_split():
    """With the width over `fsdp`, GSPMD once followed the parameters and kept the whole batch's
    activations on every device; they must shrink with the data-parallel degree as under `data`."""
    wide = dict(d_model=128, d_ff=512)
    fsdp, data = plan.make_plan(config({"fsdp": 8}, **wide)), plan.make_plan(config({"data": 8}, **wide))
    assert fsdp.temp_bytes < 1.3 * data.temp_bytes, (fsdp.temp_bytes, data.temp_bytes)


@pytest.mark.slow
def test_tpu_topology_plans_are_the_tpu_compilers():
    require_libtpu()
    devices = plan.tpu_devices("v5e:2x4")
    assert len(devices) == 8 and devices[0].platform == "tpu"
    cfg = config({"fsdp": 8})
    tpu, cpu = plan.make_plan(cfg, "tpu-v5e", devices=devices, topology="v5e:2x4"), plan.make_plan(cfg)
    assert (tpu.platform, tpu.topology, cpu.platform) == ("tpu", "v5e:2x4", "cpu")
    assert "v5" in tpu.device_kind.lower() and tpu.fits
    # The exact figures do not depend on the compiler; the compiled ones are the TPU program's own.
    assert (tpu.params_bytes, tpu.opt_state_bytes, tpu.batch_bytes) == (cpu.params_bytes, cpu.opt_state_bytes,
                                                                        cpu.batch_bytes)
    assert tpu.peak_bytes == tpu.argument_bytes + tpu.output_bytes - tpu.alias_bytes + tpu.temp_bytes > 0
    assert tpu.temp_bytes != cpu.temp_bytes  # a different compiler's buffer assignment
    # The TPU compiler reports its own peak: buffers live at once plus what it reserves (on a model
    # this small, the reserve outweighs the sum above; on GPT-3 XL the sum overstated it).
    assert tpu.compiler_peak_bytes > 0
    assert tpu.collectives["all-gather"] > 0 and tpu.attention["impl"] == "pallas"  # auto on a TPU
    # The embedding lookup reads a gathered table: GSPMD made it all-to-alls over the fsdp-split width.
    assert tpu.collectives["all-to-all"] == 0
    with pytest.raises(ConfigError, match="--topology 'v5e:3x7'"):
        plan.tpu_devices("v5e:3x7")


@pytest.mark.slow
def test_fused_qkv_gathers_fewer_weights_on_tpu(monkeypatch):
    """q, k and v as one product: FSDP gathers one kernel per layer instead of three (and the
    backward pass does not gather them again); with the heads split over `tensor` they stay apart."""
    require_libtpu()
    cfg = config({"fsdp": 4}, d_model=256, n_heads=2, d_ff=1024)
    fused = plan.make_plan(cfg, devices=plan.tpu_devices("v5p:2x2x1"), topology="v5p:2x2x1")
    for_device = kernels.for_device
    monkeypatch.setattr(kernels, "for_device", lambda *a, **k: for_device(*a, **{**k, "fuse_qkv": False}))
    apart = plan.make_plan(cfg, devices=plan.tpu_devices("v5p:2x2x1"), topology="v5p:2x2x1")
    assert fused.collectives["all-gather"] <= apart.collectives["all-gather"] - 2, (fused.collectives,
                                                                                    apart.collectives)
    monkeypatch.undo()
    tpu = plan.tpu_devices("v5p:2x2x1")
    assert trainer.kernels_for(cfg.model, sharding.make_mesh(cfg.mesh, tpu)).fuse_qkv
    split = sharding.make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), tpu)
    assert not trainer.kernels_for(cfg.model, split).fuse_qkv


@pytest.mark.slow
def test_cli_plans_for_a_tpu_topology(tmp_path):
    require_libtpu()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": MODEL, "data": {"batch_size": 16}}))
    out = gptjax("plan", cfg, "--topology", "v5e:2x2", "--accelerator", "tpu-v5e", "--output", tmp_path / "p.json")
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["platform"] == "tpu" and p["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and p["fits"] is True
    assert p["compiler_peak_bytes"] > 0 and p["attention"]["impl"] and p["collectives"]["all-reduce"] > 0
    assert "topology v5e:2x2" in out.stdout and "compiled by the TPU compiler" in out.stdout
    bad = gptjax("plan", cfg, "--topology", "v5e:2x2", "--mesh", "fsdp=8", check=False)
    assert bad.returncode == 2 and "--mesh fsdp=8 spans 8 devices but topology v5e:2x2 has 4 chips" in bad.stderr


@pytest.mark.slow
def test_cli_plans_two_slices_joined_over_the_network(tmp_path):
    """--slices 2: the TPU compiler's program for two v5e:2x4 slices, data parallel across them."""
    require_libtpu()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": MODEL, "data": {"batch_size": 16}}))
    gptjax("plan", cfg, "--topology", "v5e:2x4", "--slices", "2", "--mesh", "fsdp=8", "--output", tmp_path / "p.json")
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["devices"] == 16 and p["slices"] == 2 and p["mesh"] == {"data": 2, "fsdp": 8, "tensor": 1}
    assert p["platform"] == "tpu" and p["collectives"]["all-reduce"] > 0
    bad = gptjax("plan", cfg, "--slices", "2", check=False)
    assert bad.returncode == 2 and "--slices needs --topology" in bad.stderr


@pytest.fixture
def empty_persistent_cache(tmp_path):
    """The session's persistent cache (conftest) moved to an empty directory for one test: what
    earlier runs wrote there must not decide what this one sees."""
    from jax.experimental.compilation_cache import compilation_cache

    session_dir = jax.config.jax_compilation_cache_dir
    assert session_dir and jax.config.jax_enable_compilation_cache
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    compilation_cache.reset_cache()
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", session_dir)
    compilation_cache.reset_cache()


@pytest.mark.slow
def test_compile_step_compiles_instead_of_reading_the_persistent_cache(empty_persistent_cache):
    """Plans and `gptjax bench` compile times must be compiles: the persistent cache is neither read
    nor written, although jax decided to use it at the process's first compile."""
    import os

    from gptjax.runtime import sharding
    from gptjax.training import trainer

    cache_dir = empty_persistent_cache
    cfg = config({"data": 8}, vocab_size=509, d_model=40, n_heads=5, d_ff=152)
    tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
    before = set(os.listdir(cache_dir))
    plan.compile_step(tr)
    assert set(os.listdir(cache_dir)) == before
    # The same compile with the cache on writes an entry: the check above can fail.
    trainer.make_train_step(tr).lower(tr.abstract_state, tr.abstract_frozen, *plan.abstract_inputs(tr)).compile()
    assert set(os.listdir(cache_dir)) != before
