"""Decode speed beside transformers' `generate`, on the same random gpt2-small-shaped weights, in one run.

Batch-1 decoding is memory-bound: every weight is read once per token, so the limit is the
measured read bandwidth over the weights' bytes. The table gives, per batch size, new tokens/s
(median over --repeats, after a warm-up, implementations interleaved) for transformers' generate,
gptjax with its KV cache (float32 and bfloat16 weights), and gptjax recomputing the whole window
per token (no cache: what `gptjax sample` did before), with the ratio to transformers and, at
batch 1, the fraction of the bandwidth limit.

Usage: python benchmarks/generation.py [--new 64] [--prompt 32] [--repeats 3] [--threads 2] [--output OUT.json]
(needs torch and transformers: the test extras)
"""

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

import gptjax
from gptjax import generation


def read_bandwidth(n_bytes: int, repeats: int = 5) -> float:
    """Bytes/s of a jitted sum over a float32 array of n_bytes (all threads), the best of numpy and XLA."""
    x = jnp.ones(n_bytes // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    xla = min(_seconds(lambda: total(x).block_until_ready()) for _ in range(repeats))
    y = np.ones(n_bytes // 4, np.float32)
    host = min(_seconds(lambda: y.sum()) for _ in range(repeats))
    return n_bytes / min(xla, host)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes(model) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def bfloat16_copy(model):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graphdef, state)


def no_cache_generate(model, prompts, new: int):
    """Greedy decoding that recomputes the full (fixed-size) window for every token."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, length):
        logits = nnx.merge(graphdef, state)(tokens)
        return jnp.argmax(jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False), -1)

    p = prompts.shape[1]
    tokens = jnp.zeros((prompts.shape[0], p + new), jnp.int32).at[:, :p].set(prompts)
    for i in range(new):
        nxt = step(state, tokens, p + i)
        tokens = tokens.at[:, p + i].set(nxt)
    return np.asarray(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (XLA uses every core)")
    ap.add_argument("--no-cache-tokens", type=int, default=16, help="tokens for the no-cache baseline (slow)")
    ap.add_argument("--output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = gptjax.from_pretrained(d)
    ours_bf16 = bfloat16_copy(ours)
    bytes_f32 = weight_bytes(ours)
    bandwidth = read_bandwidth(bytes_f32)
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        prompts = rng.integers(0, 50257, (batch, args.prompt)).astype(np.int32)
        ids = [p.tolist() for p in prompts]
        n = args.new

        def hf_run():
            with torch.no_grad():
                out = hf.generate(torch.tensor(prompts, dtype=torch.long), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0)
            return out[:, args.prompt:].numpy()

        impls = {
            "transformers": (hf_run, n),
            "gptjax": (lambda: generation.generate(ours, ids, n, eos_token_id=None), n),
            "gptjax bf16 weights": (lambda: generation.generate(ours_bf16, ids, n, eos_token_id=None), n),
        }
        if batch == 1:
            k = args.no_cache_tokens
            impls["gptjax, no cache"] = (lambda: no_cache_generate(ours, jnp.asarray(prompts), k), k)
        # Prefill alone (one new token), to report decode tokens/s without it.
        prefill = {"transformers": lambda: hf.generate(torch.tensor(prompts, dtype=torch.long), max_new_tokens=1,
                                                       do_sample=False, pad_token_id=0),
                   "gptjax": lambda: generation.generate(ours, ids, 1, eos_token_id=None)}
        for fn, _ in impls.values():  # warm-up: compiles, caches, allocators
            fn()
        for fn in prefill.values():
            fn()
        times = {name: [] for name in impls}
        pre = {name: [] for name in prefill}
        for _ in range(args.repeats):
            for name, (fn, _) in impls.items():
                times[name].append(_seconds(fn))
            for name, fn in prefill.items():
                pre[name].append(_seconds(fn))
        greedy_equal = bool((np.asarray(hf_run()) == np.asarray(
            generation.generate(ours, ids, n, eos_token_id=None))[:, args.prompt:]).all())
        base = None
        for name, (_, tokens) in impls.items():
            t = statistics.median(times[name])
            p = statistics.median(pre[name]) if name in pre else None
            row = {"batch": batch, "impl": name, "seconds": t, "tokens_per_s": batch * tokens / t,
                   "decode_tokens_per_s": batch * (tokens - 1) / (t - p) if p is not None else None}
            base = row["tokens_per_s"] if name == "transformers" else base
            row["vs_transformers"] = row["tokens_per_s"] / base
            if batch == 1:
                limit = bandwidth / (bytes_f32 / (2 if "bf16" in name else 1))
                row["fraction_of_bandwidth_limit"] = (row["decode_tokens_per_s"] or row["tokens_per_s"]) / limit
            rows.append(row)
        rows.append({"batch": batch, "greedy_tokens_equal_transformers": greedy_equal})
    result = {"weights_bytes_float32": bytes_f32, "read_bandwidth_GBps": bandwidth / 1e9,
              "limit_tokens_per_s_batch1_float32": bandwidth / bytes_f32, "new_tokens": args.new,
              "prompt_tokens": args.prompt, "torch_threads": args.threads, "rows": rows,
              "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; float32 weights {bytes_f32 / 1e6:.0f} MB; "
          f"batch-1 limit {bandwidth / bytes_f32:.1f} tokens/s")
    print(f"{'batch':>5} {'implementation':<22} {'tokens/s':>9} {'decode/s':>9} {'vs HF':>6} {'of limit':>8}")
    for r in rows:
        if "impl" in r:
            dec = f"{r['decode_tokens_per_s']:9.1f}" if r["decode_tokens_per_s"] else " " * 9
            lim = f"{r['fraction_of_bandwidth_limit']:8.0%}" if "fraction_of_bandwidth_limit" in r else ""
            print(f"{r['batch']:>5} {r['impl']:<22} {r['tokens_per_s']:9.1f} {dec} {r['vs_transformers']:6.2f} {lim}")
        else:
            print(f"{r['batch']:>5} greedy tokens equal transformers': {r['greedy_tokens_equal_transformers']}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
