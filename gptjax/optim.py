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


def build(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(cfg, total_steps)

    def mask(params):
        return decay_mask(params, cfg.decay_embeddings)

    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
    elif cfg.name == "lion":
        opt = optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
    else:
        opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=mask)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip is not None else []
    return optax.chain(*parts, opt)
