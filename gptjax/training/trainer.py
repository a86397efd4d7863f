"""Pure, jitted train and eval steps and the sharded train state.

The state is a plain pytree {"step", "params", "opt_state"} of pure-dict parameters, so Optax,
Orbax and shardings see ordinary arrays; the model is rebuilt inside the step with nnx.merge.
Dropout keys are fold_in(seed, step): a pure function of the step, so resume needs no RNG state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from gptjax.config import ModelConfig, TrainConfig
from gptjax.finetune import lora
from gptjax.model import kernels as kernels_lib
from gptjax.model.gpt import GPT, abstract_model
from gptjax.runtime import sharding, splash, xla
from gptjax.training import optim, warm_start

State = dict[str, Any]


class Objective(Protocol):
    """What a run minimises, over which parameters. Pretraining, SFT and LoRA are LanguageModel;
    GPT-1's task heads are finetune.task_heads.TaskObjective. The step, the loop, checkpoints,
    metrics, signals and the NaN policy are the same for every objective (STYLE.md 15)."""

    def model_config(self, cfg: TrainConfig) -> ModelConfig:
        """The GPT the run trains (a task run's has three more embedding rows)."""

    def layout(self, cfg: TrainConfig, shapes: dict, axes: dict, shardings: dict, mesh: Mesh) -> Layout:
        """The trained parameters and what is frozen beside them, from the model's shapes, logical
        axes and shardings."""

    def starting_params(self, tr: Trainer) -> dict:
        """The trained parameters of a run without a checkpoint, placed in their shardings."""

    def model_params(self, params: dict, frozen: dict | None) -> dict:
        """The GPT's parameters from the trained ones (and the frozen base)."""

    def loss(self, tr: Trainer, params: dict, frozen: dict | None, rows, key) -> tuple[jax.Array, dict]:
        """(what the gradient follows, metrics to log: "loss" first); `rows` one micro-batch."""


@dataclasses.dataclass(frozen=True)
class Layout:
    shapes: dict  # the trained parameters
    shardings: dict
    frozen_shardings: dict | None = None  # parameters passed to every step beside the state, never updated
    abstract_frozen: dict | None = None


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything compiled for one config on one mesh: shardings, the optimizer, the steps."""

    cfg: TrainConfig
    mesh: Mesh
    graphdef: Any
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    abstract_state: State  # ShapeDtypeStructs carrying the target shardings
    state_shardings: State
    kernels: kernels_lib.Kernels  # how the model runs on this mesh's devices (also in graphdef)
    objective: Objective
    # LoRA: the state's params are the adapters; the base model's parameters are frozen, passed
    # to every step beside the state (never in the optimizer or the checkpoints). None otherwise.
    frozen_shardings: dict | None = None
    abstract_frozen: dict | None = None

    def model_params(self, params: dict, frozen: dict | None) -> dict:
        """The model's parameters: the state's own, or the base with the adapters merged in."""
        return self.objective.model_params(params, frozen)

    @property
    def batch_sharding(self):
        return sharding.batch_sharding(self.mesh)


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """Next-token prediction over token rows [B, T+1] (pretraining) or supervised rows (SFT), of
    every parameter or (with `lora`, finetune.lora) of adapters beside a frozen base."""

    lora: Any = None

    def model_config(self, cfg: TrainConfig) -> ModelConfig:
        return cfg.model

    def layout(self, cfg, shapes, axes, shardings, mesh) -> Layout:
        if cfg.finetune.lora is None:
            return Layout(shapes, shardings)
        adapter_shapes, adapter_axes = lora.adapter_layout(cfg.finetune.lora, shapes, axes)
        return Layout(adapter_shapes, sharding.param_shardings(adapter_axes, adapter_shapes, mesh), shardings,
                      sharding.abstract(shapes, shardings))

    def starting_params(self, tr: Trainer) -> dict:
        cfg, param_sh = tr.cfg, tr.state_shardings["params"]
        if cfg.finetune.lora is not None:
            return jax.jit(lambda: lora.init_adapters(cfg.finetune.lora, tr.abstract_state["params"], cfg.seed),
                           out_shardings=param_sh)()
        if cfg.init_from is not None:
            return warm_start.load_params(cfg, tr.mesh, param_sh)
        # Initialised directly into the target shardings: no single-device copy ever exists.
        return jax.jit(lambda: nnx.to_pure_dict(nnx.state(GPT(cfg.model, rngs=nnx.Rngs(params=cfg.seed)), nnx.Param)),
                       out_shardings=param_sh)()

    def model_params(self, params, frozen):
        return params if frozen is None else lora.merge(frozen, params, self.lora)

    def loss(self, tr, params, frozen, rows, key):
        if self.lora is not None and self.lora.dropout > 0:  # adapters beside their layers, inputs dropped out
            model = nnx.merge(tr.graphdef, frozen)
            lora.attach(model, params, self.lora, key)
        else:
            model = nnx.merge(tr.graphdef, self.model_params(params, frozen))
        total, ce, weights = row_losses(model, rows, key, tr.cfg.optim.z_loss)
        if not isinstance(rows, dict):  # every target counts
            return jnp.mean(total), {"loss": jnp.mean(ce)}
        n = jnp.maximum(jnp.sum(weights), 1.0)  # the mean over trained targets
        return jnp.sum(total * weights) / n, {"loss": jnp.sum(ce * weights) / n}


def kernels_for(cfg: ModelConfig, mesh: Mesh) -> kernels_lib.Kernels:
    """The kernels a model runs with on `mesh`: chosen for its devices, activations placed by
    logical axes, this mesh's Pallas attention kernel, q/k/v fused unless the heads are split."""
    return kernels_lib.for_device(cfg, sharding.device(mesh), place=sharding.Activations(mesh),
                                  pallas=splash.SplashAttention(mesh), heads_split=mesh.shape["tensor"] > 1)


def make_trainer(cfg: TrainConfig, mesh: Mesh, objective: Objective | None = None) -> Trainer:
    """Abstract evaluation only: shapes and shardings of the state, nothing allocated."""
    objective = LanguageModel(cfg.finetune.lora) if objective is None else objective
    sharding.check_batch(cfg.data.batch_size // cfg.optim.grad_accum, mesh,
                         "data.batch_size / optim.grad_accum (the micro-batch)")
    sharding.check_batch(cfg.eval_batch_size, mesh, "eval_batch_size")
    model_cfg = objective.model_config(cfg)
    kernels = kernels_for(model_cfg, mesh)
    abstract_model = nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(params=cfg.seed), kernels=kernels))
    graphdef, params_state = nnx.split(abstract_model)
    shapes = nnx.to_pure_dict(params_state)
    axes = sharding.logical_axes(abstract_model)
    layout = objective.layout(cfg, shapes, axes, sharding.param_shardings(axes, shapes, mesh), mesh)
    tx = optim.build(cfg.optim, cfg.model.width_mult)
    opt_shapes = jax.eval_shape(tx.init, layout.shapes)
    state_sh = {"step": sharding.replicated(mesh), "params": layout.shardings,
                "opt_state": sharding.opt_state_shardings(tx, opt_shapes, layout.shapes, layout.shardings, mesh)}
    abstract = sharding.abstract({"step": jax.ShapeDtypeStruct((), jnp.int32), "params": layout.shapes,
                                  "opt_state": opt_shapes}, state_sh)
    return Trainer(cfg, mesh, graphdef, tx, optim.schedule(cfg.optim, cfg.steps), abstract, state_sh, kernels,
                   objective, layout.frozen_shardings, layout.abstract_frozen)


def state_layout(cfg: TrainConfig) -> tuple[str, list[tuple]]:
    """The state's tree structure, shapes and dtypes: what a checkpoint must match, whatever
    the mesh (evaluated abstractly, nothing allocated)."""
    model = abstract_model(cfg.model)
    shapes = nnx.to_pure_dict(nnx.split(model)[1])
    if cfg.finetune.lora is not None:
        shapes, _ = lora.adapter_layout(cfg.finetune.lora, shapes, sharding.logical_axes(model))
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": shapes,
             "opt_state": jax.eval_shape(optim.build(cfg.optim, cfg.model.width_mult).init, shapes)}
    leaves, treedef = jax.tree.flatten(state)
    return str(treedef), [(tuple(a.shape), str(a.dtype)) for a in leaves]


def init_state(tr: Trainer) -> State:
    """The state a run starts from without a checkpoint (the objective's starting parameters)."""
    return state_from_params(tr, tr.objective.starting_params(tr))


def state_from_params(tr: Trainer, params: dict) -> State:
    """A step-0 state around given parameters, already in their target shardings."""

    def init(params):
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tr.tx.init(params)}

    return jax.jit(init, in_shardings=(tr.state_shardings["params"],), out_shardings=tr.state_shardings,
                   donate_argnums=0)(params)


def token_losses(logits_BxTxV, targets_BxT, z_loss: float):
    """Per-token cross-entropy (+ z-loss) in float32; padded vocabulary entries hold the float32
    minimum, so they add exactly nothing to the normaliser."""
    lse = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    picked = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    ce = lse - picked
    return ce + z_loss * jnp.square(lse) if z_loss else ce, ce


def make_train_step(tr: Trainer):
    """The one train step: the objective's loss over `grad_accum` micro-batches, one optimizer
    update, the NaN policy decided on the device, and the stop flag's agreement."""
    cfg = tr.cfg
    accum = cfg.optim.grad_accum
    lora_cfg = cfg.finetune.lora
    dropout = (cfg.model.embed_dropout or cfg.model.attn_dropout or cfg.model.resid_dropout
               or (lora_cfg is not None and lora_cfg.dropout > 0))

    def loss_fn(params, frozen, rows, key, poison):
        loss, metrics = tr.objective.loss(tr, params, frozen, rows, key)
        if poison is not None:  # faults.nan_at_step; nothing is traced without it
            loss, metrics = loss * poison, jax.tree.map(lambda m: m * poison, metrics)
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry, xs):
        rows, key = xs
        (_, metrics), grads = grad_fn(carry["params"], carry["frozen"], rows, key, carry["poison"])
        add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
        return {**carry, "grads": add(carry["grads"], grads), "metrics": add(carry["metrics"], metrics)}, None

    def step(state, frozen, rows_BxT1, stop_D):
        key = jax.random.fold_in(jax.random.key(cfg.seed), state["step"]) if dropout else None
        micro_rows = jax.tree.map(
            lambda x: sharding.micro_batches(x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), tr.mesh), rows_BxT1)
        keys = jax.random.split(key, accum) if key is not None else None
        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        # The objective's metrics, shapes only: its forward pass traced abstractly, no gradient.
        metric_shapes = jax.eval_shape(lambda: tr.objective.loss(tr, state["params"], frozen,
                                                                 jax.tree.map(lambda x: x[0], micro_rows),
                                                                 None if keys is None else keys[0])[1])
        carry = {"params": state["params"], "frozen": frozen, "grads": zeros,
                 "metrics": jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes),
                 "poison": _poison(cfg, state)}
        carry, _ = jax.lax.scan(micro, carry, (micro_rows, keys))
        grads = jax.tree.map(lambda g: g / accum, carry["grads"])
        logged = jax.tree.map(lambda m: m / accum, carry["metrics"])
        grad_norm = optax.tree.norm(grads)
        lr = tr.lr_schedule(state["step"])
        opt_state = optim.with_learning_rate(state["opt_state"], lr)
        updates, opt_state = tr.tx.update(grads, opt_state, state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(logged["loss"]) & jnp.isfinite(grad_norm)
        if cfg.nan_policy == "skip":
            # Decided on the device: the host reads metrics a step late and cannot veto in time.
            params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                             (params, opt_state), (state["params"], state["opt_state"]))
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        # stop_D holds, per device, whether its process heard a signal: the max travels with the
        # metrics, so every process learns of a stop at the same step without an extra sync.
        metrics = {**logged, "grad_norm": grad_norm, "finite": finite, "lr": lr, "stop": jnp.max(stop_D) > 0}
        return new_state, metrics

    return xla.jit(step, mesh=tr.mesh, in_shardings=(tr.state_shardings, tr.frozen_shardings, tr.batch_sharding,
                                                     sharding.per_device(tr.mesh)),
                   out_shardings=(tr.state_shardings, sharding.replicated(tr.mesh)), donate_argnums=0)


def row_losses(model: GPT, rows, key, z_loss: float):
    """(loss with z-loss, cross-entropy, weights) per target token. `rows` is a token array
    [B, T+1] (every target counts) or supervised rows (sft.py: tokens, weights, segments,
    positions), whose weights pick the trained targets and whose segments keep packed examples
    apart."""
    if isinstance(rows, dict):
        logits = model.logits(rows["tokens"][:, :-1], rows["positions"][:, :-1], key=key,
                              segments_BxT=rows["segments"][:, :-1])
        total, ce = token_losses(logits, rows["tokens"][:, 1:], z_loss)
        return total, ce, rows["weights"]
    logits = model.logits(rows[:, :-1], key=key)
    total, ce = token_losses(logits, rows[:, 1:], z_loss)
    return total, ce, jnp.ones_like(ce)


def _poison(cfg: TrainConfig, state: State) -> jax.Array | None:
    """None, or (faults.nan_at_step, for fault-injection tests) NaN on that step and 1.0 before
    and after it."""
    if cfg.faults.nan_at_step is None:
        return None
    return jnp.where(state["step"] + 1 == cfg.faults.nan_at_step, jnp.nan, 1.0)


def make_eval_step(tr: Trainer):
    """(sum of token losses, token count) over one batch; `weights_BxT` picks the targets that
    count (0: padding, or a target an earlier window scored already)."""
    graphdef = tr.graphdef

    def step(params, frozen, rows_BxT1, weights_BxT):
        _, ce, w = row_losses(nnx.merge(graphdef, tr.model_params(params, frozen)), rows_BxT1, None, 0.0)
        w = w * weights_BxT
        return jnp.sum(ce * w), jnp.sum(w)

    return xla.jit(step, mesh=tr.mesh, in_shardings=(tr.state_shardings["params"], tr.frozen_shardings,
                                                     tr.batch_sharding, tr.batch_sharding),
                   out_shardings=sharding.replicated(tr.mesh))
