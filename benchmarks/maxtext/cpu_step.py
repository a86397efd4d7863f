"""gptjax's and MaxText's train steps on this CPU, alternated (issue 20): the small shape (6 layers,
width 384, 6 heads of 64, MLP 1536, vocabulary 50304, 16 × 256 tokens, one CPU device, bfloat16
compute, float32 weights, full remat, scanned layers). Each run is a fresh process; a run's figure
is the median of 20 steps after 5 warm-up steps (MaxText's own per-step `seconds`, gptjax bench's
one-step blocks). Prints the medians over runs and writes JSON.

    python cpu_step.py [--runs 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP, TIMED = 5, 20
SHAPE = dict(layers=6, d_model=384, heads=6, head_dim=64, mlp=1536, vocab=50304, seq=256, batch=16)


def maxtext_step_ms() -> float:
    import maxtext

    s = SHAPE
    argv = [sys.executable, "-m", "maxtext.trainers.pre_train.train", f"{maxtext.__path__[0]}/configs/base.yml",
            "model_name=gpt3-6b", "override_model_config=true", f"base_emb_dim={s['d_model']}",
            f"base_num_query_heads={s['heads']}", f"base_num_kv_heads={s['heads']}", f"head_dim={s['head_dim']}",
            f"base_mlp_dim={s['mlp']}", f"base_num_decoder_layers={s['layers']}", f"vocab_size={s['vocab']}",
            f"max_target_length={s['seq']}", f"trainable_position_size={s['seq']}",
            f"per_device_batch_size={s['batch']}", "remat_policy=full", "dtype=bfloat16", "weight_dtype=float32",
            "scan_layers=true", "hardware=cpu", "dataset_type=synthetic", "enable_checkpointing=false",
            "skip_jax_distributed_system=true", "attention=dot_product", f"steps={WARMUP + TIMED}",
            "run_name=cpu-step", f"base_output_directory={tempfile.mkdtemp()}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    seconds = [float(m.group(2)) for m in re.finditer(r"completed step: (\d+), seconds: ([\d.]+)", out.stdout + out.stderr)]
    if len(seconds) < WARMUP + TIMED:
        raise RuntimeError(f"MaxText logged {len(seconds)} steps (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return 1e3 * statistics.median(seconds[WARMUP:WARMUP + TIMED])


def gptjax_step_ms() -> float:
    s = SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "bench.json")
        args = [sys.executable, "-m", "gptjax.cli", "bench", "gpt2", f"model.n_layers={s['layers']}",
                f"model.d_model={s['d_model']}", f"model.n_heads={s['heads']}", f"model.d_ff={s['mlp']}",
                f"model.vocab_size={s['vocab']}", f"model.max_seq_len={s['seq']}", f"data.batch_size={s['batch']}",
                "model.remat=full", "model.compute_dtype=bfloat16", "model.param_dtype=float32",
                "model.activation=gelu_tanh", "--sections", "train", "--repeats", str(TIMED), "--steps", "1",
                "--warmup", str(WARMUP), "--output", out_file]
        out = subprocess.run(args, capture_output=True, text=True, timeout=1800, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if out.returncode:
            raise RuntimeError(f"gptjax bench failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        with open(out_file) as f:
            return json.load(f)["train"]["step_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="alternated runs of each side")
    ap.add_argument("--output", default=os.path.join(HERE, "cpu_step.json"))
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"gptjax": [], "maxtext": []}
    for _ in range(args.runs):
        runs["maxtext"].append(maxtext_step_ms())
        runs["gptjax"].append(gptjax_step_ms())
        print({k: [round(v, 1) for v in vs] for k, vs in runs.items()}, file=sys.stderr, flush=True)
    result = {"shape": SHAPE, "runs": runs, "median_ms": {k: statistics.median(v) for k, v in runs.items()}}
    result["maxtext_ms_over_gptjax_ms"] = result["median_ms"]["maxtext"] / result["median_ms"]["gptjax"]
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["median_ms"]), f"MaxText ms / gptjax ms = {result['maxtext_ms_over_gptjax_ms']:.3f}")


if __name__ == "__main__":
    main()
