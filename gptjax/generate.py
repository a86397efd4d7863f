"""Sampling: temperature, top-k, top-p (nucleus), greedy at temperature 0.

Without a KV cache yet, each new token re-reads a fixed window of max_seq_len positions, so one
compiled forward serves every step; a later issue adds the cache and batching.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.model import GPT


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int | None, top_p: float | None):
    """Logits with everything outside the top-k and the top-p nucleus set to -inf."""
    logits = logits_BxV / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k", "top_p"))
def _next_token(graphdef, params, window_BxT, last_B, key, temperature, top_k, top_p):
    logits_BxTxV = nnx.merge(graphdef, params)(window_BxT)
    logits = jnp.take_along_axis(logits_BxTxV, last_B[:, None, None], axis=1)[:, 0]
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1)


def sample(model: GPT, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> list[int]:
    """The prompt's continuation (new token ids only)."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if temperature < 0:
        raise ValueError(f"temperature = {temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k} must be >= 1 (leave it unset for no top-k filtering)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p = {top_p} must be in (0, 1] (leave it unset for no nucleus filtering)")
    t = model.cfg.max_seq_len
    graphdef, params = nnx.split(model)
    tokens = list(prompt)
    key = jax.random.key(seed)
    for i in range(max_new_tokens):
        context = tokens[-t:]
        window = np.zeros((1, t), np.int32)
        window[0, : len(context)] = context
        step_key = jax.random.fold_in(key, i)
        nxt = _next_token(graphdef, params, jnp.asarray(window), jnp.asarray([len(context) - 1]), step_key,
                          float(temperature), top_k, top_p)
        tokens.append(int(nxt[0]))
    return tokens[len(prompt):]
