"""Generation with a KV cache: one jitted prefill over the (left-padded) prompts, then a decode
loop compiled as a whole (`lax.while_loop`: no Python dispatch per token).

Prompts of different lengths share one batch: each is left-padded to a common length, its
tokens keep positions 0, 1, ... (learned and rotary positions, ALiBi distances and local windows
all see the same positions as an unpadded run), and padding slots never enter attention (their
key position is EMPTY). Sampling follows transformers' `generate`: greedy at temperature 0,
temperature, top-k, top-p, repetition penalty (CTRL's divide/multiply rule), no-repeat n-grams,
several sequences per prompt, stop at end-of-text, stop strings (on the host, afterwards),
reproducible by seed. Padded vocabulary entries are never sampled (logits are cut to vocab_size).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from gptjax.config import SAMPLE
from gptjax.model.attention import EMPTY
from gptjax.model.gpt import GPT, DecodeWeights, KVCache
from gptjax.runtime import xla

PAD_MULTIPLE = 16  # prompt and total lengths are rounded up to this: few compiles across calls


@dataclasses.dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_id: int | None = None  # generation of a sequence stops after it

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k = {self.top_k} must be >= 1 (leave it unset for no top-k filtering)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p = {self.top_p} must be in (0, 1] (leave it unset for no nucleus filtering)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty = {self.repetition_penalty} must be > 0 (1 is none)")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size = {self.no_repeat_ngram_size} must be >= 0 (0 is none)")


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


def _penalise_repeats(logits_BxV, seen_BxV, penalty: float):
    # CTRL (Keskar et al. 2019) as transformers applies it: divide positive logits, multiply negative.
    penalised = jnp.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return jnp.where(seen_BxV, penalised, logits_BxV)


def _banned_ngrams(tokens_BxS, length, n: int, vocab: int):
    """[B, V] True for tokens that would repeat an n-gram already in tokens[:, :length]."""
    b, s = tokens_BxS.shape
    idx = jnp.arange(s)
    # The n-1 tokens that end the sequence so far, and every window of n-1 tokens before it.
    suffix = jax.lax.dynamic_slice_in_dim(tokens_BxS, length - (n - 1), n - 1, axis=1)
    starts = idx[: s - n + 1]  # window j covers j .. j+n-2; its next token is at j+n-1
    windows = jnp.stack([tokens_BxS[:, starts + i] for i in range(n - 1)], axis=-1)  # [B, W, n-1]
    match = jnp.all(windows == suffix[:, None, :], axis=-1) & (starts + n - 1 < length)[None, :]
    following = tokens_BxS[:, starts + n - 1]  # [B, W]
    banned = jnp.zeros((b, vocab), bool)
    return banned.at[jnp.arange(b)[:, None], following].max(match)


def _choose(logits_BxV, key, tokens_BxS, length, seen_BxV, s: Sampling):
    if s.repetition_penalty != 1.0:
        logits_BxV = _penalise_repeats(logits_BxV, seen_BxV, s.repetition_penalty)
    if s.no_repeat_ngram_size == 1:  # a 1-gram repeats if the token was seen at all (prompt included)
        logits_BxV = jnp.where(seen_BxV, -jnp.inf, logits_BxV)
    elif s.no_repeat_ngram_size > 1:
        banned = _banned_ngrams(tokens_BxS, length, s.no_repeat_ngram_size, logits_BxV.shape[-1])
        banned = banned & (length >= s.no_repeat_ngram_size - 1)
        logits_BxV = jnp.where(banned, -jnp.inf, logits_BxV)
    if s.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BxV, s.temperature, s.top_k, s.top_p),
                                  axis=-1).astype(jnp.int32)


def _generate(graphdef, params, weights, tokens_BxP, starts_B, key, *, sampling: Sampling, slots: int, stream=None,
              scores: bool = False):
    model = nnx.merge(graphdef, params)
    b, p = tokens_BxP.shape
    vocab = model.cfg.vocab_size
    # Prefill: the prompts, left-padded; slot j of sequence i holds position j - starts[i], and
    # padding slots are recorded EMPTY so that no query ever sees them.
    pad = jnp.arange(p)[None, :] < starts_B[:, None]
    positions = jnp.maximum(jnp.arange(p)[None, :] - starts_B[:, None], 0)
    weights = DecodeWeights.of(model) if weights is None else weights  # slices of the stacked weights
    logits, cache = model.decode(tokens_BxP, positions, KVCache.empty(model.cfg, b, slots),
                                 jnp.where(pad, EMPTY, positions), weights)
    state = dict(logits=logits[:, -1], cache=cache, tokens=jnp.zeros((b, slots), jnp.int32).at[:, :p].set(tokens_BxP),
                 seen=_seen(tokens_BxP, pad, vocab), done=jnp.zeros(b, bool), i=jnp.zeros((), jnp.int32), key=key,
                 scores=jnp.zeros((b, sampling.max_new_tokens if scores else 0, vocab), jnp.float32))

    def cond(st):
        return (st["i"] < sampling.max_new_tokens) & ~jnp.all(st["done"])

    def body(st):
        length = p + st["i"]
        key, sub = jax.random.split(st["key"])
        nxt = _choose(st["logits"], sub, st["tokens"], length, st["seen"], sampling)
        done = st["done"]
        if sampling.eos_token_id is not None:
            nxt = jnp.where(done, sampling.eos_token_id, nxt)
        if stream is not None:
            io_callback(stream, None, nxt, done, ordered=True)
        if sampling.eos_token_id is not None:
            done = done | (nxt == sampling.eos_token_id)
        tokens = jax.lax.dynamic_update_slice(st["tokens"], nxt[:, None], (0, length))
        logits, cache = model.decode(nxt[:, None], (length - starts_B)[:, None], st["cache"], weights=weights)
        seen = st["seen"].at[jnp.arange(b), nxt].set(True)
        kept = st["scores"].at[:, st["i"]].set(st["logits"]) if scores else st["scores"]
        return dict(logits=logits[:, 0], cache=cache, tokens=tokens, seen=seen, done=done, i=st["i"] + 1, key=key,
                    scores=kept)

    out = jax.lax.while_loop(cond, body, state)
    return out["tokens"], out["i"], out["scores"]


@functools.cache
def _compiled_generate():
    """`_generate` compiled as every model program is (xla.jit), made when first used."""
    return xla.jit(_generate, static_argnames=("graphdef", "sampling", "slots", "stream", "scores"))


def _seen(tokens_BxP, pad_BxP, vocab):
    seen = jnp.zeros((tokens_BxP.shape[0], vocab), bool)
    rows = jnp.arange(tokens_BxP.shape[0])[:, None]
    return seen.at[rows, tokens_BxP].max(~pad_BxP)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def generate(model: GPT, prompts: Sequence[Sequence[int]] | Sequence[str], max_new_tokens: int = 64, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, num_return_sequences: int = 1,
             eos_token_id: int | None | str = "auto", stop: Sequence[str] = (), seed: int = 0, tokenizer=None,
             stream: Callable[[int, int], None] | None = None, return_scores: bool = False):
    """Continue each prompt; one list of token ids per returned sequence (prompt included), in
    prompt order, `num_return_sequences` per prompt.

    `prompts` are token-id lists, or strings encoded with `tokenizer` (default: the one
    from_pretrained attached to the model). `eos_token_id` "auto" is the tokenizer's end-of-text,
    None generates the full length. `stop` strings cut a sequence after their first occurrence
    (decoded on the host). `stream(index, token)` is called as each token is produced.
    `return_scores` also returns the logits each new token was chosen from, [sequences, new, V]
    (before penalties and filtering), as transformers' output_scores.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    ids = prompt_ids(prompts, tokenizer, model.cfg.vocab_size)
    if eos_token_id == "auto":
        eos_token_id = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    sampling = Sampling(max_new_tokens, float(temperature), top_k, top_p, float(repetition_penalty),
                        int(no_repeat_ngram_size), eos_token_id)
    sampling.check()
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences = {num_return_sequences} must be >= 1")
    ids = [list(p) for p in ids for _ in range(num_return_sequences)]
    longest = max(len(p) for p in ids)
    p = _round_up(longest, PAD_MULTIPLE)
    slots = _round_up(p + max_new_tokens, PAD_MULTIPLE)
    # Positions count from each prompt's first real token, so left padding takes no position.
    if model.cfg.position == "learned" and longest + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({longest} tokens) plus max_new_tokens = {max_new_tokens} exceeds the "
                         f"model's {model.cfg.max_seq_len} learned positions; shorten the prompt or generate less")
    batch = np.zeros((len(ids), p), np.int32)
    starts = np.asarray([p - len(x) for x in ids], np.int32)
    for i, x in enumerate(ids):
        batch[i, p - len(x):] = x
    graphdef, params = nnx.split(model)
    callback = None
    if stream is not None:
        def callback(tokens, done):
            for i, (t, d) in enumerate(zip(np.asarray(tokens), np.asarray(done))):
                if not d:
                    stream(i, int(t))
    tokens, n, scores = _compiled_generate()(graphdef, params, decode_weights(model), jnp.asarray(batch),
                                             jnp.asarray(starts), jax.random.key(seed), sampling=sampling, slots=slots,
                                             stream=callback, scores=return_scores)
    tokens, n = np.asarray(tokens), int(n)
    out = []
    for i, x in enumerate(ids):
        new = tokens[i, p:p + n].tolist()
        if eos_token_id is not None and eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        out.append(x + _cut_at_stop(new, stop, tokenizer))
    return (out, np.asarray(scores)[:, :n]) if return_scores else out


def decode_weights(model: GPT) -> DecodeWeights | None:
    """Per-layer weight copies for decoding on CPU (see DecodeWeights), made once per set of
    parameters and kept on the model's own object; None elsewhere (accelerators slice stacked
    weights without a copy, and copies would double the parameters' memory)."""
    if jax.devices()[0].platform != "cpu":
        return None
    leaves = jax.tree.leaves(nnx.state(model.blocks))
    kept = _COPIES.get(model)
    if kept is None or len(kept[0]) != len(leaves) or any(a is not b for a, b in zip(kept[0], leaves)):
        kept = (leaves, DecodeWeights.of(model))
        _COPIES[model] = kept
    return kept[1]


# The copies live as long as their model, and are remade when its parameters change (a
# training run samples the same model object with new weights). Read on the host, never traced.
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_ids(prompts, tokenizer, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists or of strings")
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer: pass tokenizer=..., or load the model with "
                             "gptjax.from_pretrained from a directory that has one")
        ids = [tokenizer.encode(p) for p in prompts]
    else:
        ids = [list(map(int, p)) for p in prompts]
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"prompt {i} is empty; give at least one token (e.g. the end-of-text token)")
        outside = [t for t in x if not 0 <= t < vocab_size]
        if outside:  # the embedding lookup would clamp them silently
            raise ValueError(f"prompt {i} holds token id {outside[0]}, outside the model's vocabulary "
                             f"[0, {vocab_size})")
    return ids


def _cut_at_stop(new: list[int], stop: Sequence[str], tokenizer) -> list[int]:
    """The shortest prefix of `new` whose text contains a stop string (all of `new` if none)."""
    if not stop:
        return new
    if tokenizer is None:
        raise ValueError("stop strings need a tokenizer to decode the generated tokens")
    text = tokenizer.decode(new)
    if not any(s in text for s in stop):
        return new
    for k in range(1, len(new) + 1):
        if any(s in tokenizer.decode(new[:k]) for s in stop):
            return new[:k]
    return new


def sample(model: GPT, prompt: list[int], max_new_tokens: int, *, temperature: float = SAMPLE.temperature,
           top_k: int | None = SAMPLE.top_k, top_p: float | None = None, seed: int = 0,
           repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, stop: Sequence[str] = (),
           tokenizer=None) -> list[int]:
    """The prompt's continuation (new token ids only), for one prompt. Past a learned-position
    model's context the window slides as in nanoGPT: each round continues the last half-context of
    tokens, so a 64-position model still writes 200 tokens (the repetition penalty and banned
    n-grams see each round's window). Generation ends at a stop string, cut after it."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    limit = model.cfg.max_seq_len if model.cfg.position == "learned" else None
    tokens, new, rounds = list(prompt), [], 0
    while len(new) < max_new_tokens:
        fits = limit is None or len(tokens) + max_new_tokens - len(new) <= limit
        context = tokens if fits else tokens[-max(1, limit // 2):]
        n = max_new_tokens - len(new) if limit is None else min(max_new_tokens - len(new), limit - len(context))
        out = generate(model, [context], n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed + rounds,
                       repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                       eos_token_id=None, tokenizer=tokenizer)[0][len(context):]
        tokens, new, rounds = tokens + out, new + out, rounds + 1
        cut = _cut_at_stop(new, stop, tokenizer)
        if len(cut) < len(new):
            return cut
    return new
