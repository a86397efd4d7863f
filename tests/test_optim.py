"""Schedules, the weight-decay mask, each optimizer, z-loss, mixed precision and padded-vocab loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import TOKENS, run_steps

from gptjax.config import (
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from gptjax.model.gpt import abstract_model, init_model
from gptjax.runtime import sharding
from gptjax.training import optim, trainer

BASE = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000)


def lr_at(cfg, steps, total=2000):
    sched = optim.schedule(cfg, total)
    return np.array([float(sched(s)) for s in steps])


def test_warmup_then_cosine_matches_nanogpt_get_lr():
    def get_lr(it):  # nanoGPT's train.py, verbatim in spirit
        if it < 100:
            return 1e-3 * (it + 1) / (100 + 1)
        ratio = (it - 100) / (2000 - 100)
        return 1e-4 + 0.5 * (1.0 + np.cos(np.pi * ratio)) * (1e-3 - 1e-4)

    steps = [0, 1, 50, 99, 100, 101, 700, 1500, 1999, 2000, 2500]
    np.testing.assert_allclose(lr_at(BASE, steps), [get_lr(min(s, 2000)) for s in steps], rtol=1e-5)


def test_wsd_holds_then_decays_linearly():
    cfg = dataclasses.replace(BASE, schedule="wsd", wsd_decay_fraction=0.25)
    lrs = lr_at(cfg, [150, 1000, 1499, 1500, 1750, 2000])
    np.testing.assert_allclose(lrs[:4], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(lrs[4], 0.5 * (1e-3 + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(lrs[5], 1e-4, rtol=1e-5)


def test_constant_schedule_after_warmup():
    lrs = lr_at(dataclasses.replace(BASE, schedule="constant"), [0, 100, 1999])
    np.testing.assert_allclose(lrs, [1e-3 / 101, 1e-3, 1e-3], rtol=1e-5)  # optax computes in float32


def test_decay_mask_spares_biases_norms_and_optionally_embeddings():
    cfg = ModelConfig(vocab_size=64, max_seq_len=8, d_model=32, n_layers=2, n_heads=4)
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    for with_tables in (False, True):
        mask = optim.decay_mask(params, with_tables)
        assert mask["blocks"]["mlp"]["up"]["kernel"] and mask["blocks"]["attn"]["o"]["kernel"]
        assert not mask["blocks"]["ln1"]["scale"] and not mask["blocks"]["mlp"]["up"]["bias"]
        assert not mask["final_norm"]["scale"]
        assert mask["embed"]["table"] == with_tables == mask["pos_embed"]["table"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor"])
def test_weight_decay_is_decoupled_and_scaled_by_the_schedule(name):
    # With zero gradients every optimizer's direction is 0, so one update is exactly the decay:
    # -lr * weight_decay * p on decayed parameters (AdamW's formula), nothing elsewhere. At lr 0.01
    # this tells decoupled decay apart from decay that ignores the rate (-weight_decay * p).
    cfg = ModelConfig(vocab_size=64, max_seq_len=8, d_model=32, n_layers=1, n_heads=4)
    params = nnx.to_pure_dict(nnx.state(init_model(cfg), nnx.Param))
    params = jax.tree.map(lambda x: x + 1.0, params)  # make biases non-zero so decay would show
    tx = optim.build(OptimConfig(name=name, lr=1.0, min_lr=0.0, weight_decay=0.5, grad_clip=None), 1.0)
    lr = 0.01
    state = optim.with_learning_rate(tx.init(params), jnp.asarray(lr))
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert float(optim.applied_learning_rate(state)) == pytest.approx(lr)
    decayed = optim.decay_mask(params, False)
    for u, p, d in zip(jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(decayed)):
        np.testing.assert_allclose(u, -lr * 0.5 * p if d else np.zeros_like(p), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,field,value", [("adafactor", "b2", 0.99), ("adafactor", "b1", 0.8),
                                              ("adafactor", "eps", 1e-6), ("lion", "eps", 1e-6),
                                              ("adamw", "adafactor_momentum", 0.9)])
def test_options_an_optimizer_does_not_use_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=rf"OptimConfig.{field} = {value!r} is not used by '{name}'"):
        OptimConfig(name=name, **{field: value})
    OptimConfig(name=name)  # the defaults are accepted


CFG = TrainConfig(model=ModelConfig(vocab_size=65, max_seq_len=16, d_model=64, n_layers=2, n_heads=4, d_ff=128),
                  data=DataConfig(batch_size=16, tokenizer="char"),
                  optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1), steps=8)


@pytest.mark.slow
@pytest.mark.parametrize("name,lr", [("adamw", 1e-2), ("lion", 1e-3), ("adafactor", 1e-1)])
def test_each_optimizer_learns(name, lr):
    cfg = dataclasses.replace(CFG, optim=dataclasses.replace(CFG.optim, name=name, lr=lr, min_lr=0.0))
    _, losses = run_steps(cfg, MeshConfig(data=2, fsdp=2, tensor=2), 8, steps=8)
    assert losses[-1] < losses[0] - 0.1, (name, losses)


@pytest.mark.slow
def test_z_loss_changes_the_update_not_the_reported_loss():
    with_z = dataclasses.replace(CFG, optim=dataclasses.replace(CFG.optim, z_loss=1e-2))
    _, plain = run_steps(CFG, MeshConfig(data=1), 1, steps=3)
    _, z = run_steps(with_z, MeshConfig(data=1), 1, steps=3)
    assert plain[0] == z[0]  # step 1 reports cross-entropy from the same initial weights
    assert np.max(np.abs(plain[1:] - z[1:])) > 1e-6


@pytest.mark.slow
def test_bfloat16_compute_with_float32_master_weights():
    cfg = dataclasses.replace(CFG, model=CFG.model.replace(compute_dtype="bfloat16"))
    state, losses = run_steps(cfg, MeshConfig(data=8), 8, steps=4)
    assert state["params"]["blocks"]["mlp"]["up"]["kernel"].dtype == jnp.float32
    _, ref = run_steps(CFG, MeshConfig(data=8), 8, steps=4)
    assert np.all(np.isfinite(losses)) and 0 < np.max(np.abs(losses - ref)) < 0.05


def test_loss_over_a_padded_vocabulary_is_exact():
    cfg = ModelConfig(vocab_size=65, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, vocab_pad_multiple=64)
    model = init_model(cfg)
    rows = jnp.asarray(TOKENS[:34].reshape(2, 17).astype(np.int32))
    padded = model.logits(rows[:, :-1])
    assert padded.shape[-1] == 128
    _, ce = trainer.token_losses(padded, rows[:, 1:], 0.0)
    expected = optax.softmax_cross_entropy_with_integer_labels(padded[..., :65], rows[:, 1:])
    np.testing.assert_allclose(ce, expected, rtol=1e-6)


def test_accumulation_must_divide_the_batch():
    with pytest.raises(ConfigError, match="grad_accum = 5 must divide data.batch_size = 16"):
        dataclasses.replace(CFG, optim=dataclasses.replace(CFG.optim, grad_accum=5))


def test_micro_batch_must_divide_the_data_parallel_size():
    cfg = dataclasses.replace(CFG, optim=dataclasses.replace(CFG.optim, grad_accum=4))
    with pytest.raises(ConfigError, match="micro-batch"):
        trainer.make_trainer(cfg, sharding.make_mesh(MeshConfig(data=8)))


@pytest.mark.slow
def test_skipped_update_keeps_the_logged_rate_the_applied_one():
    # Warmup makes every step's rate distinct. Step 3's update is dropped (nan_policy=skip); the
    # rate logged for each later step must be the one the optimizer applied, and follow the
    # train step (not the count of accepted updates, which lags by one after the skip).
    cfg = dataclasses.replace(CFG, nan_policy="skip", faults=dataclasses.replace(CFG.faults, nan_at_step=3),
                              optim=dataclasses.replace(CFG.optim, warmup_steps=10))
    mesh = sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    tr = trainer.make_trainer(cfg, mesh)
    state, step = trainer.init_state(tr), trainer.make_train_step(tr)
    from gptjax.data import loader

    batches = loader.TrainBatches(TOKENS, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed)
    no_stop = jax.device_put(np.zeros(1, np.float32), sharding.per_device(mesh))
    schedule = optim.schedule(cfg.optim, cfg.steps)
    for s in range(5):
        state, m = step(state, None, jax.device_put(batches.at(s * cfg.data.batch_size), tr.batch_sharding), no_stop)
        assert float(m["lr"]) == pytest.approx(float(schedule(s)), rel=1e-6)
        if s == 2:
            assert not bool(m["finite"])
        else:  # the skipped step keeps the previous state, rate included
            assert float(optim.applied_learning_rate(state["opt_state"])) == float(m["lr"])


def test_mup_scales_the_hidden_kernels_wherever_the_blocks_sit():
    # GPT-1's task fine-tuning trains {"model": ..., "head": ...}: μP's 1/width_mult must still reach
    # the kernels inside the blocks, and nothing else.
    ones = jnp.ones((2, 2))
    params = {"model": {"blocks": {"mlp": {"kernel": ones, "bias": ones}}, "embed": {"table": ones}},
              "head": {"kernel": ones}}
    tx = optim.build(OptimConfig(lr=1.0, min_lr=0.0, weight_decay=0.0, grad_clip=None), 4.0)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    hidden = updates["model"]["blocks"]["mlp"]["kernel"]
    others = (updates["head"]["kernel"], updates["model"]["embed"]["table"], updates["model"]["blocks"]["mlp"]["bias"])
    for other in others:
        np.testing.assert_allclose(hidden, other / 4.0, rtol=1e-6)
