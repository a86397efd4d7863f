"""The model side of evaluation: log-likelihoods of continuations and of whole texts, batched.

Both are one jitted function over right-padded token windows (causal attention makes padding at
the end invisible to earlier positions): the summed log-probability of the masked target tokens,
and whether greedy decoding would have produced every one of them. Requests are sorted by length
and cut into batches of a fixed number of rows whose length is rounded up to a few buckets per
octave, so a benchmark of thousands of items compiles a handful of shapes.

Text is encoded as lm-evaluation-harness 0.4.x encodes it (api/model.py `_encode_pair`): trailing
spaces of the context move to the continuation, the pair is encoded whole and the continuation's
tokens are what follows the context's own encoding; an empty context is the end-of-text token.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from gptjax.errors import Interrupted
from gptjax.evals import EvalError
from gptjax.model.gpt import GPT
from gptjax.runtime import xla

log = logging.getLogger(__name__)

TokenPair = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


class ScoreError(EvalError):
    """A request the model cannot score; the message says which and why."""


def _score(graphdef, params, inputs_BxT, targets_BxT, mask_BxT):
    model = nnx.merge(graphdef, params)
    logits = model(inputs_BxT)  # float32 [B, T, vocab]; no dropout without a key
    picked = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    logprob = picked - jax.nn.logsumexp(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1) == targets_BxT
    return jnp.sum(jnp.where(mask_BxT, logprob, 0.0), axis=1), jnp.all(greedy | ~mask_BxT, axis=1)


@functools.cache
def _compiled_score():
    return xla.jit(_score, static_argnames=("graphdef",))


def bucket(length: int, cap: int) -> int:
    """`length` rounded up to one of four steps per octave (at least 16), at most `cap`."""
    step = max(16, 1 << max(0, length.bit_length() - 3))
    return min(cap, -(-length // step) * step)


class Scorer:
    """Scores token windows with `model` in batches of `batch_size` rows."""

    def __init__(self, model: GPT, *, batch_size: int = 8, max_length: int | None = None, progress: bool = True,
                 interrupted: Callable[[], bool] | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ScoreError(f"batch_size = {batch_size!r}; expected a positive integer")
        limit = model.cfg.max_seq_len
        if max_length is not None and not 1 < max_length <= limit:
            raise ScoreError(f"max_length = {max_length}; expected 2..{limit} (the model's max_seq_len)")
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self.interrupted = interrupted  # asked before each batch (a trainer's stop signal)
        self.max_length = max_length or limit
        self.graphdef, self.params = nnx.split(model)
        self.truncated = 0  # requests of the last call whose context lost tokens on the left

    # -- token level --------------------------------------------------------------------------

    def windows(self, pairs: Sequence[TokenPair]) -> list[tuple[list[int], list[int]]]:
        """(input, target) windows: the last max_length + 1 tokens of context + continuation,
        shifted by one; the last len(continuation) targets are scored."""
        out, self.truncated = [], 0
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ScoreError(f"request {i} has an empty continuation; there is nothing to score")
            if not context:
                raise ScoreError(f"request {i} has an empty context; give at least one token (end-of-text)")
            if len(continuation) > self.max_length:
                raise ScoreError(f"request {i}: its continuation is {len(continuation)} tokens, more than the "
                                 f"{self.max_length} the model can score at once; shorten it")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            self.truncated += len(context) + len(continuation) > self.max_length + 1
            out.append((whole[:-1], whole[-len(continuation):]))
        return out

    def score_windows(self, windows: Sequence[tuple[Sequence[int], Sequence[int]]],
                      desc: str = "scoring") -> list[tuple[float, bool]]:
        """(summed log-probability of the targets, all targets greedy) for each (input, target) window,
        where the targets are the tokens following the last len(target) inputs."""
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(windows)
        bar = tqdm(total=len(windows), desc=desc, disable=not self.progress, unit="req")
        for start in range(0, len(order), self.batch_size):
            if self.interrupted is not None and self.interrupted():
                bar.close()
                raise Interrupted(f"{desc} stopped after {start} of {len(order)} requests")
            rows = order[start:start + self.batch_size]
            length = bucket(len(windows[rows[0]][0]), self.max_length)
            inputs, targets, mask = _pack([windows[i] for i in rows], self.batch_size, length)
            sums, greedy = _compiled_score()(self.graphdef, self.params, inputs, targets, mask)
            for i, s, g in zip(rows, np.asarray(sums), np.asarray(greedy)):
                results[i] = (float(s), bool(g))
            bar.update(len(rows))
        bar.close()
        return results  # type: ignore[return-value]

    def loglikelihood_tokens(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        return self.score_windows(self.windows(pairs))

    def rolling_windows(self, ids: Sequence[int], stride: int | None = None) -> list[tuple[list[int], list[int]]]:
        """transformers' sliding-window perplexity recipe: windows of max_length tokens starting
        every `stride` tokens (default max_length: disjoint); each predicts its tokens after the
        first and scores only those no earlier window scored. With stride < max_length every token but
        ids[0] counts once; disjoint windows (stride = max_length) also leave each window's first out."""
        length = self.max_length
        stride = length if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= length:
            raise ScoreError(f"stride = {stride!r}; expected 1..{length} (the window length)")
        if len(ids) < 2:
            raise ScoreError(f"the text encodes to {len(ids)} token(s); perplexity needs at least 2")
        out, scored_to = [], 1  # ids[:scored_to] are scored already (ids[0] never is)
        for begin in range(0, len(ids), stride):
            end = min(begin + length, len(ids))
            window = list(ids[begin:end])
            if end - begin > 1:
                out.append((window[:-1], window[max(scored_to, begin + 1) - begin:]))
            scored_to = end
            if end == len(ids):
                break
        return out

def _pack(windows, rows: int, length: int):
    inputs = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), bool)
    for r, (inp, tgt) in enumerate(windows):
        n, k = len(inp), len(tgt)
        inputs[r, :n] = inp
        targets[r, :n - 1] = inp[1:]
        targets[r, n - 1] = tgt[-1]
        mask[r, n - k:n] = True
    return jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(mask)


# -- text level (lm-eval's encoding) ----------------------------------------------------------


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_id: int | None) -> TokenPair:
    """(context ids, continuation ids) exactly as lm-eval's TemplateLM.loglikelihood builds them."""
    if context == "":
        if prefix_id is None:
            raise ScoreError("an empty context needs an end-of-text token to condition on; this tokenizer has none")
        ids = encode(continuation)
        return ([prefix_id], ids) if ids[:1] != [prefix_id] else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = encode(context + continuation), encode(context)
    return head, whole[len(head):]


def loglikelihood(scorer: Scorer, tokenizer, requests: Iterable[tuple[str, str]]) -> list[tuple[float, bool]]:
    """lm-eval's loglikelihood contract for (context, continuation) strings."""
    pairs = [encode_pair(tokenizer.encode, c, x, tokenizer.eot_id) for c, x in requests]
    results = scorer.loglikelihood_tokens(pairs)
    if scorer.truncated:
        log.warning("%d request(s) were longer than the model's %d-token context; their contexts were cut "
                    "from the left, as lm-eval does", scorer.truncated, scorer.max_length)
    return results


def perplexity(scorer: Scorer, ids: Sequence[int], n_bytes: Callable[[list[int]], int],
               stride: int | None = None) -> dict[str, float]:
    """Perplexity over the scored tokens of sliding windows, and bits per byte over the text they
    spell (`n_bytes(ids)` is the UTF-8 length of a run of tokens)."""
    windows = scorer.rolling_windows(ids, stride)
    nll = -math.fsum(s for s, _ in scorer.score_windows(windows, desc="perplexity"))
    tokens = sum(len(target) for _, target in windows)
    # The targets, in order, are every scored token once: spelled whole, a character whose bytes
    # two windows share counts once (decoded per window it would count as replacement characters).
    spelled = n_bytes([t for _, target in windows for t in target])
    return {"perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / spelled,
            "nll_per_token": nll / tokens, "tokens": tokens, "bytes": spelled, "windows": len(windows)}
