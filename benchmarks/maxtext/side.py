"""One side of the comparison: compile one framework's train step for a TPU topology with the TPU
compiler (libtpu, no TPU needed) and print its figures as one JSON line.

    python side.py gptjax|maxtext SHAPE ATTENTION

SHAPE is a key of SHAPES; ATTENTION is gptjax's attention_impl (pallas, xla) or MaxText's
`attention` (flash: its splash kernel, dot_product). Both programs' collectives are counted by the
same function (gptjax.tools.plan.collective_counts: static ops in the optimized HLO, a scanned
body once); memory is each compiled program's memory_analysis().
"""

from __future__ import annotations

import json
import sys
import time

GIB = 2**30

# The shapes of issue 20: GPT-3 XL on v5e-8 (fsdp=8) and MaxText's stock gpt3-6b on v5p-8 (fsdp=4).
SHAPES = {
    "gpt3-xl": dict(layers=24, d_model=2048, heads=16, head_dim=128, mlp=8192, vocab=50304, seq=1024, positions=1024,
                    per_device_batch=2, topology="v5e:2x4", maxtext_topology="v5e-8", chips=8),
    "gpt3-6b": dict(layers=48, d_model=3072, heads=12, head_dim=256, mlp=12288, vocab=32768, seq=1024,
                    positions=16384, per_device_batch=12, topology="v5p:2x2x1", maxtext_topology="v5p-8", chips=4),
}
# GPT-3 XL with heads of 64 (GPT-2's and Pythia's width; 32 of them): what width 64 costs the kernel.
# MaxText's splash wrapper refuses it (maxtext #1047), so only gptjax's sides run it.
SHAPES["gpt3-xl-64"] = {**SHAPES["gpt3-xl"], "heads": 32, "head_dim": 64}


def gptjax_side(shape: dict, attention: str) -> dict:
    from gptjax.config import TrainConfig, from_dict
    from gptjax.tools import plan

    model = {"vocab_size": shape["vocab"], "max_seq_len": shape["positions"], "d_model": shape["d_model"],
             "n_layers": shape["layers"], "n_heads": shape["heads"], "d_ff": shape["mlp"],
             "activation": "gelu_tanh", "residual": "pre_ln", "tie_embeddings": True, "remat": "full",
             "compute_dtype": "bfloat16", "param_dtype": "float32", "attention_impl": attention}
    cfg = from_dict(TrainConfig, {"model": model, "mesh": {"data": 1, "fsdp": shape["chips"]},
                                  "data": {"batch_size": shape["per_device_batch"] * shape["chips"],
                                           "seq_len": shape["seq"]}})
    p = plan.make_plan(cfg, devices=plan.tpu_devices(shape["topology"]), topology=shape["topology"])
    fields = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes", "compiler_peak_bytes",
              "collectives", "compile_s")
    return {**{f: getattr(p, f) for f in fields}, "attention": p.attention["impl"]}


def maxtext_side(shape: dict, attention: str) -> dict:
    import maxtext
    from maxtext.trainers.pre_train import train_compile

    from gptjax.tools import plan

    base = f"{maxtext.__path__[0]}/configs/base.yml"
    argv = ["train_compile", base, "model_name=gpt3-6b", "override_model_config=true",
            f"base_emb_dim={shape['d_model']}", f"base_num_query_heads={shape['heads']}",
            f"base_num_kv_heads={shape['heads']}", f"head_dim={shape['head_dim']}", f"base_mlp_dim={shape['mlp']}",
            f"base_num_decoder_layers={shape['layers']}", f"vocab_size={shape['vocab']}",
            f"max_target_length={shape['seq']}", f"trainable_position_size={shape['positions']}",
            f"per_device_batch_size={shape['per_device_batch']}", f"ici_fsdp_parallelism={shape['chips']}",
            "ici_data_parallelism=1", "remat_policy=full", "dtype=bfloat16", "weight_dtype=float32",
            "scan_layers=true", f"compile_topology={shape['maxtext_topology']}", "compile_topology_num_slices=1",
            "enable_checkpointing=false", "dataset_type=synthetic", "skip_jax_distributed_system=true",
            f"attention={attention}", "run_name=side-by-side", "base_output_directory=/tmp/maxtext-side"]
    captured = {}
    compile_fn = train_compile.jit_and_compile

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        captured["compiled"] = compile_fn(*args, **kwargs)
        captured["compile_s"] = time.perf_counter() - t0
        return captured["compiled"]

    train_compile.jit_and_compile = timed
    train_compile.main(argv)
    return {**plan.memory_figures(captured["compiled"]), "collectives": plan.collective_counts(captured["compiled"]),
            "compile_s": captured["compile_s"], "attention": attention}


def main() -> None:
    framework, shape, attention = sys.argv[1:4]
    out = (gptjax_side if framework == "gptjax" else maxtext_side)(SHAPES[shape], attention)
    print("RESULT " + json.dumps({"framework": framework, "shape": shape, **out}), flush=True)


if __name__ == "__main__":
    main()
