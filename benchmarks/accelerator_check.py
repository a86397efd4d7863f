"""The accelerator check (benchmarks/accelerator_check.sh runs it): what a GPU does with gptjax, in
at most a few minutes, with random weights and nothing downloaded.

Measured, each with gptjax's own tools (tools/bench.py, tools/plan.py) so the figures mean what
`gptjax bench` and `gptjax plan` mean:
- MFU of gpt2-small and gpt2-medium training in bfloat16, with cuDNN flash attention and with
  XLA's fused attention (median step of timed blocks after warm-up);
- cuDNN attention's logits against the einsum reference on the same device and weights;
- decode tokens/s at batch 1 and 8 (gpt2-small);
- the device's peak memory while training gpt2-small against `gptjax plan`'s prediction.
`--smoke` runs the same code on a tiny model with the paths this machine has (CPU: einsum and XLA),
which is how the test suite keeps the script working where no GPU is.

Usage: python benchmarks/accelerator_check.py [--smoke] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import numpy as np

from gptjax.config import ConfigError, TrainConfig, from_dict
from gptjax.model import kernels
from gptjax.model.gpt import init_model
from gptjax.presets import get_preset
from gptjax.tools import bench, plan

SMOKE_MODEL = {"vocab_size": 512, "max_seq_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256}


def train_config(model: dict, batch: int, attention: str) -> TrainConfig:
    return from_dict(TrainConfig, {"name": "accelerator-check", "model": {**model, "compute_dtype": "bfloat16",
                                                                          "attention_impl": attention},
                                   "data": {"batch_size": batch}, "steps": 1000, "optim": {"warmup_steps": 10}})


def models(smoke: bool) -> dict[str, tuple[dict, int]]:
    """name -> (model fields, global batch): a batch that keeps an H100 busy without remat."""
    if smoke:
        return {"tiny": (SMOKE_MODEL, 8)}
    fields = lambda name: {k: v for k, v in get_preset(name).to_dict().items()}  # noqa: E731
    return {"gpt2": (fields("gpt2"), 16), "gpt2-medium": (fields("gpt2-medium"), 8)}


def attentions() -> tuple[str, ...]:
    device = jax.devices()[0]
    return ("cudnn", "xla") if kernels.is_nvidia(device.platform, device.device_kind) else ("einsum", "xla")


def measure_mfu(smoke: bool, opts: bench.BenchOptions, say) -> list[dict]:
    rows = []
    for name, (model, batch) in models(smoke).items():
        for attention in attentions():
            cfg = train_config(model, batch, attention)
            say(f"train {name} ({attention}) ...")
            try:
                t = bench.measure_train(cfg, opts)
            except ConfigError as e:  # this device or model cannot take the path: say why
                rows.append({"model": name, "attention": attention, "skipped": str(e)})
                continue
            rows.append({"model": name, "attention": attention, "batch": batch, "seq_len": cfg.resolved_seq_len,
                         "step_ms": t["step_ms"], "tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"],
                         "peak_flops": t["peak_flops"]})
    return rows


def attention_agreement(smoke: bool) -> dict:
    """Logits of the fused path (cuDNN on NVIDIA, XLA elsewhere) against the einsum reference,
    same bfloat16 weights and tokens: the largest difference relative to the logits' scale."""
    model_fields, _ = next(iter(models(smoke).values()))
    fused = attentions()[0] if attentions()[0] != "einsum" else "xla"
    cfg = train_config(model_fields, 4, fused).model
    device = jax.devices()[0]
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, min(cfg.max_seq_len, 1024)))
    reference = init_model(cfg, 0, kernels.Kernels(kernels.Choice("einsum", "reference")))
    chosen = kernels.for_device(cfg, device)
    candidate = init_model(cfg, 0, chosen)
    ref = np.asarray(jax.jit(lambda t: reference(t))(tokens), np.float32)
    out = np.asarray(jax.jit(lambda t: candidate(t))(tokens), np.float32)
    return {"impl": chosen.attention.impl, "reason": chosen.attention.reason,
            "max_abs_diff": float(np.max(np.abs(out - ref))), "logit_scale": float(np.max(np.abs(ref))),
            "relative": float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))}


def measure_decode(smoke: bool, opts: bench.BenchOptions) -> list[dict]:
    model_fields, _ = next(iter(models(smoke).values()))
    cfg = train_config(model_fields, 8, "auto")
    return bench.measure_generate(cfg, opts)


def memory_against_plan(smoke: bool, opts: bench.BenchOptions) -> dict:
    """Peak bytes in use while the train step runs (the device's allocator statistics, where it
    keeps them) against `gptjax plan`'s figures for the same step on the same device."""
    name, (model_fields, batch) = next(iter(models(smoke).items()))
    cfg = train_config(model_fields, batch, "auto")
    predicted = plan.make_plan(cfg)
    bench.measure_train(cfg, dataclasses.replace(opts, repeats=1))
    measured = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return {"model": name, "predicted_peak_bytes": predicted.peak_bytes,
            "compiler_peak_bytes": predicted.compiler_peak_bytes, "measured_peak_bytes": measured,
            "measured_over_predicted": measured / predicted.peak_bytes if measured else None,
            "note": None if measured else "this device keeps no allocator statistics (CPU)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model: check the script runs here")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    steps = dict(repeats=3, steps=5, warmup=2) if args.smoke else dict(repeats=5, steps=10, warmup=3)
    opts = bench.BenchOptions(sections=("train",), prompt=32, new_tokens=8 if args.smoke else 128,
                              gen_batch=(1, 8), **steps)
    device = jax.devices()[0]
    result = {"device": device.device_kind, "platform": device.platform, "devices": jax.device_count(),
              "jax": jax.__version__, "smoke": args.smoke}
    # First: the allocator's peak counts from the start of the process, and only this step may set it.
    say("memory against the plan ...")
    result["memory"] = memory_against_plan(args.smoke, opts)
    result["train"] = measure_mfu(args.smoke, opts, say)
    say("attention against the einsum reference ...")
    result["attention"] = attention_agreement(args.smoke)
    say("decode ...")
    result["decode"] = measure_decode(args.smoke, opts)
    result["seconds"] = time.perf_counter() - t0
    print(format_result(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def format_result(r: dict) -> str:
    lines = [f"{r['device']} ({r['platform']}, jax {r['jax']}){' smoke' if r['smoke'] else ''}: {r['seconds']:.0f} s"]
    for row in r["train"]:
        if "skipped" in row:
            lines.append(f"train {row['model']:<12} {row['attention']:<6} skipped: {row['skipped']}")
        else:
            lines.append(f"train {row['model']:<12} {row['attention']:<6} {row['step_ms']:9.2f} ms/step "
                         f"{row['tokens_per_s']:12,.0f} tokens/s  MFU {row['mfu']:.1%}")
    a = r["attention"]
    lines.append(f"attention {a['impl']} vs einsum: max |diff| {a['max_abs_diff']:.3g} of logits up to "
                 f"{a['logit_scale']:.3g} ({a['relative']:.2e})")
    for row in r["decode"]:
        lines.append(f"decode batch {row['batch']}: {row['decode_tokens_per_s']:,.1f} tokens/s")
    m = r["memory"]
    measured = f"{m['measured_peak_bytes'] / 2**30:.2f} GiB" if m["measured_peak_bytes"] else m["note"]
    lines.append(f"memory {m['model']}: plan {m['predicted_peak_bytes'] / 2**30:.2f} GiB, measured {measured}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
