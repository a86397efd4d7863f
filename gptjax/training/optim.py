"""OptimConfig -> learning-rate schedule and Optax chain (clipping, optimizer, decay mask)."""

from __future__ import annotations

import jax
import optax

from gptjax.config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine / warmup-stable-decay / constant.

    Warmup gives lr·(s+1)/(W+1) at step s, as nanoGPT's get_lr, so step 0 already learns.
    """
    w = cfg.warmup_steps
    warmup = optax.linear_schedule(cfg.lr / (w + 1), cfg.lr, w)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        decay_end = total_steps if cfg.decay_steps is None else cfg.decay_steps
        after = optax.cosine_decay_schedule(cfg.lr, max(decay_end - w, 1), alpha=cfg.min_lr / cfg.lr)
    else:  # wsd: hold the peak, then decay linearly to min_lr over the last fraction of the run
        decay_len = max(int(round(cfg.wsd_decay_fraction * total_steps)), 1)
        stable_len = max(total_steps - w - decay_len, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, cfg.min_lr, decay_len)],
            [stable_len])
    return optax.join_schedules([warmup, after], [w]) if w > 0 else after


def decay_mask(params: dict, decay_embeddings: bool) -> dict:
    """Weight decay on matrices only: kernels always, embedding tables by choice; never biases
    or norm scales, whatever their rank (stacked layers make a norm scale 2-D, so rank cannot
    decide)."""
    decayed = {"kernel", "table"} if decay_embeddings else {"kernel"}
    return jax.tree_util.tree_map_with_path(lambda path, _: str(path[-1].key) in decayed, params)


def _direction(cfg: OptimConfig) -> list[optax.GradientTransformation]:
    """The optimizer's update direction, before weight decay and the learning rate."""
    if cfg.name == "adamw":
        return [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)]
    if cfg.name == "lion":
        return [optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2)]
    # Adafactor as optax.adafactor's defaults (Shazeer & Stern 2018): factored second moments,
    # update clipping at RMS 1, steps relative to each parameter block's scale.
    parts = [optax.scale_by_factored_rms(decay_rate=cfg.adafactor_decay_rate),
             optax.clip_by_block_rms(1.0), optax.scale_by_param_block_rms()]
    if cfg.adafactor_momentum is not None:
        parts.append(optax.ema(cfg.adafactor_momentum, debias=False))
    return parts


def mup_labels(params: dict) -> dict:
    """μP's matrix-like parameters (both dimensions grow with width: the kernels inside blocks)
    against vector-like ones (embeddings, the output head, biases, norms), as the mup package
    classifies them by their infinite dimensions. The blocks may sit inside a larger tree (GPT-1's
    task fine-tuning: {"model": ..., "head": ...})."""
    def label(path, _):
        keys = [str(k.key) for k in path]
        return "hidden" if "blocks" in keys and keys[-1] == "kernel" else "other"

    return jax.tree_util.tree_map_with_path(label, params)


def _chain(cfg: OptimConfig, learning_rate: float, width_mult: float) -> optax.GradientTransformation:
    def mask(params):
        return decay_mask(params, cfg.decay_embeddings)

    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip is not None else []
    parts += _direction(cfg)
    # Decoupled weight decay (Loshchilov & Hutter), scaled by the scheduled rate as in AdamW,
    # for every optimizer: update = -lr * (direction + weight_decay * p).
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    if width_mult != 1.0:  # μP (MuAdam): hidden matrices learn at lr / m
        parts.append(optax.multi_transform({"hidden": optax.scale(1.0 / width_mult), "other": optax.identity()},
                                           mup_labels))
    return optax.chain(*parts)


def build(cfg: OptimConfig, width_mult: float) -> optax.GradientTransformation:
    """The Optax chain, its learning rate a hyperparameter that the train step sets from the
    schedule at the step being taken (`with_learning_rate`), not from the optimizer's own update
    count: a dropped update (nan_policy=skip) then shifts nothing, and the logged rate is the
    applied one. `width_mult`: the model's (ModelConfig.width_mult), which μP scales by."""
    def chain(learning_rate):  # a closure: inject_hyperparams would trace any other argument
        return _chain(cfg, learning_rate, width_mult)

    return optax.inject_hyperparams(chain)(learning_rate=cfg.lr)


def with_learning_rate(opt_state: optax.InjectHyperparamsState, lr: jax.Array) -> optax.InjectHyperparamsState:
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


def applied_learning_rate(opt_state: optax.InjectHyperparamsState) -> jax.Array:
    return opt_state.hyperparams["learning_rate"]
