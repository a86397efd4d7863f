"""Sharded training: the loss does not depend on the mesh, accumulation equals a big batch."""

import dataclasses
import logging

import jax
import numpy as np
import pytest
from helpers import run_steps

from gptjax.config import (
    ConfigError,
    DataConfig,
    FaultConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from gptjax.runtime import sharding
from gptjax.training import trainer

# Sizes divide every mesh below (heads 4, width 64, MLP 128) except the 65-character vocabulary,
# which must fall back to replication on fsdp=8 and tensor=2 without breaking anything.
MODEL = ModelConfig(vocab_size=65, max_seq_len=16, d_model=64, n_layers=2, n_heads=4, d_ff=128)
CFG = TrainConfig(model=MODEL, data=DataConfig(batch_size=16, tokenizer="char"),
                  optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1), steps=5)


MESHES = {
    "1 device": (MeshConfig(data=1), 1),
    "8-way data": (MeshConfig(data=8), 8),
    "8-way fsdp": (MeshConfig(data=1, fsdp=8), 8),
    "2x2x2": (MeshConfig(data=2, fsdp=2, tensor=2), 8),
    "2 slices of fsdp=4": (MeshConfig(data=1, fsdp=4, dcn_data=2), 8),
}

# Per-device shard shapes that each mesh must produce (stacked layers lead every block param).
# Matrices split over fsdp (and heads and MLP over tensor); vectors such as norm scales whole.
EXPECTED_SHARDS = {
    "1 device": {"up": (2, 64, 128), "q": (2, 64, 4, 16), "o": (2, 4, 16, 64), "embed": (65, 64), "ln1": (2, 64)},
    "8-way data": {"up": (2, 64, 128), "q": (2, 64, 4, 16), "o": (2, 4, 16, 64), "embed": (65, 64), "ln1": (2, 64)},
    "8-way fsdp": {"up": (2, 8, 128), "q": (2, 8, 4, 16), "o": (2, 4, 16, 8), "embed": (65, 8), "ln1": (2, 64)},
    "2x2x2": {"up": (2, 32, 64), "q": (2, 32, 2, 16), "o": (2, 2, 16, 32), "embed": (65, 32), "ln1": (2, 64)},
    "2 slices of fsdp=4": {"up": (2, 16, 128), "q": (2, 16, 4, 16), "o": (2, 4, 16, 16), "embed": (65, 16),
                           "ln1": (2, 64)},
}


def shard_shapes(state):
    p = state["params"]
    leaves = {"up": p["blocks"]["mlp"]["up"]["kernel"], "q": p["blocks"]["attn"]["q"]["kernel"],
              "o": p["blocks"]["attn"]["o"]["kernel"], "embed": p["embed"]["table"],
              "ln1": p["blocks"]["ln1"]["scale"]}
    return {k: v.addressable_shards[0].data.shape for k, v in leaves.items()}


def adam_moments(state):
    # inject_hyperparams(chain(clip, scale_by_adam, ...)) -> inner (clip state, ScaleByAdamState, ...).
    adam = state["opt_state"].inner_state[1]
    return adam.mu, adam.nu


@pytest.fixture(scope="module")
def mesh_runs():
    return {name: run_steps(CFG, mc, n) for name, (mc, n) in MESHES.items()}


@pytest.mark.slow
def test_losses_do_not_depend_on_the_mesh(mesh_runs):
    reference = mesh_runs["1 device"][1]
    assert reference[-1] < reference[0] - 0.05, f"training did not move: {reference}"
    for name, (_, losses) in mesh_runs.items():
        np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", list(MESHES))
def test_parameters_and_optimizer_state_are_really_sharded(mesh_runs, name):
    state = mesh_runs[name][0]
    assert shard_shapes(state) == EXPECTED_SHARDS[name]
    mu, nu = adam_moments(state)
    for moments in (mu, nu):
        assert shard_shapes({"params": moments}) == EXPECTED_SHARDS[name]


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    four = dataclasses.replace(CFG, optim=dataclasses.replace(CFG.optim, grad_accum=4))
    _, big = run_steps(CFG, MeshConfig(data=2, fsdp=2, tensor=1), 4)
    _, acc = run_steps(four, MeshConfig(data=2, fsdp=2, tensor=1), 4)
    np.testing.assert_allclose(acc, big, rtol=0, atol=1e-5)
    # The micro-batch is really smaller: the accumulated run must differ from a run that
    # trains on one micro-batch per step (guards against accumulation being a no-op).
    _, small = run_steps(dataclasses.replace(CFG, data=DataConfig(batch_size=4, tokenizer="char")),
                         MeshConfig(data=2, fsdp=2, tensor=1), 4)
    assert np.max(np.abs(small - big)) > 1e-3


@pytest.mark.slow
def test_dimensions_that_do_not_divide_are_replicated_with_a_notice(caplog):
    cfg = TrainConfig(model=MODEL.replace(n_heads=5, d_model=40, d_ff=72),
                      data=DataConfig(batch_size=8, tokenizer="char"), steps=2)
    sharding._noticed.clear()
    with caplog.at_level(logging.WARNING, logger="gptjax.runtime.sharding"):
        state, losses = run_steps(cfg, MeshConfig(data=1, fsdp=2, tensor=2), 4, steps=2)
    assert np.isfinite(losses).all()
    assert any("heads=5 does not divide mesh axis tensor=2" in r.message for r in caplog.records)
    q = state["params"]["blocks"]["attn"]["q"]["kernel"]
    assert q.addressable_shards[0].data.shape == (2, 20, 5, 8)  # embed split over fsdp, heads whole


def test_batch_not_divisible_by_data_parallel_size_fails_before_compiling():
    cfg = dataclasses.replace(CFG, data=DataConfig(batch_size=12, tokenizer="char"))
    with pytest.raises(ConfigError, match=r"data.batch_size.*= 12.*not divisible.*data-parallel size 8"):
        trainer.make_trainer(cfg, sharding.make_mesh(MeshConfig(data=8)))


def test_slices_lead_the_data_axis_and_hold_contiguous_devices():
    """mesh.dcn_data: the data axis spans the slices slice-major, so only the gradient reduction
    crosses between them; devices without a slice index are grouped in order."""
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, dcn_data=2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert sorted(ids[:2].ravel()) == [0, 1, 2, 3] and sorted(ids[2:].ravel()) == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match="mesh.dcn_data = 3 slices do not divide the 8 devices"):
        sharding.make_mesh(MeshConfig(dcn_data=3))
    with pytest.raises(ConfigError, match=r"needs 8 devices, but 4 are available per slice \(2 slices\)"):
        sharding.make_mesh(MeshConfig(data=8, dcn_data=2))


def test_mesh_shape_errors_name_the_sizes():
    with pytest.raises(ConfigError, match="needs 12 devices"):
        sharding.make_mesh(MeshConfig(data=3, fsdp=2, tensor=2))
    with pytest.raises(ConfigError, match="not divisible by 3"):
        sharding.make_mesh(MeshConfig(data=-1, fsdp=3))


def _step_text(cfg):
    from gptjax.tools import plan

    tr = trainer.make_trainer(cfg, sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    return trainer.make_train_step(tr).lower(tr.abstract_state, tr.abstract_frozen, *plan.abstract_inputs(tr)).as_text()


def test_a_fault_hook_is_traced_only_when_configured():
    # faults.nan_at_step multiplies the losses by NaN on its step: without it the step must hold
    # no trace of the hook (the compiled program users run is the one without faults). The hook
    # scales the token losses, so it shows as multiplies the step without it does not have.
    def multiplies(cfg):
        return _step_text(cfg).count("stablehlo.multiply")

    assert multiplies(CFG) < multiplies(dataclasses.replace(CFG, faults=FaultConfig(nan_at_step=3)))
