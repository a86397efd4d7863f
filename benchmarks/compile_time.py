"""Compile time of a forward pass, scanned vs unrolled layers, from abstract weights (nothing is
allocated, so gpt2-xl fits anywhere). Usage: python benchmarks/compile_time.py gpt2 gpt2-xl"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model.gpt import abstract_model
from gptjax.presets import get_preset


def compile_seconds(cfg, batch: int, seq: int) -> float:
    graphdef, state = nnx.split(abstract_model(cfg))

    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    t0 = time.perf_counter()
    jax.jit(forward).lower(state, tokens).compile()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("presets", nargs="+")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    args = p.parse_args()
    for name in args.presets:
        for scan in (True, False):
            cfg = get_preset(name).replace(scan_layers=scan)
            seconds = compile_seconds(cfg, args.batch, args.seq)
            print(json.dumps({"preset": name, "scan_layers": scan, "batch": args.batch, "seq": args.seq,
                              "compile_s": round(seconds, 2), "device": jax.devices()[0].device_kind}))


if __name__ == "__main__":
    main()
