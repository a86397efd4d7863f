"""gptjax beside MaxText on the TPU compiler's programs (issue 20): per-chip arguments, temporaries
and peak (the compiler's own figures), collective op counts, and compile time as the median of
alternated pairs, each compile in a fresh process. Writes JSON and prints a Markdown table.

    python compare.py [--shapes gpt3-xl gpt3-6b] [--pairs 5] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30
# (framework, attention): gptjax's TPU kernel and XLA's path; MaxText's splash kernel and dot product.
SIDES = [("gptjax", "pallas"), ("maxtext", "flash"), ("gptjax", "xla"), ("maxtext", "dot_product")]


def measure(framework: str, shape: str, attention: str) -> dict:
    out = subprocess.run([sys.executable, os.path.join(HERE, "side.py"), framework, shape, attention],
                         capture_output=True, text=True, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{framework} {shape} {attention} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["gpt3-xl", "gpt3-6b", "gpt3-xl-64"])
    ap.add_argument("--pairs", type=int, default=5, help="alternated compiles of each side (median compile time)")
    ap.add_argument("--output", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args()
    results = []
    for shape in args.shapes:
        sides = [side for side in SIDES if side[0] == "gptjax" or not shape.endswith("-64")]
        runs: dict[tuple[str, str], list[dict]] = {side: [] for side in sides}
        for _ in range(args.pairs):  # alternated, so drift on the machine falls on every side alike
            for framework, attention in sides:
                runs[(framework, attention)].append(measure(framework, shape, attention))
                print(f"{shape} {framework} {attention}: {runs[(framework, attention)][-1]['compile_s']:.1f} s",
                      file=sys.stderr, flush=True)
        for (framework, attention), rs in runs.items():
            first = rs[0]
            results.append({**first, "attention": attention,
                            "compile_s": statistics.median(r["compile_s"] for r in rs),
                            "compile_s_all": [round(r["compile_s"], 2) for r in rs]})
    with open(args.output, "w") as f:
        json.dump({"pairs": args.pairs, "results": results}, f, indent=1)
    print("| shape | framework, attention | arguments GiB | temporaries GiB | peak GiB (compiler) | "
          "all-gather / all-reduce / collective-permute / all-to-all | compile s (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        c = r["collectives"]
        print(f"| {r['shape']} | {r['framework']}, {r['attention']} | {r['argument_bytes'] / GIB:.2f} | "
              f"{r['temp_bytes'] / GIB:.2f} | {(r['compiler_peak_bytes'] or r['peak_bytes']) / GIB:.2f} | "
              f"{c['all-gather']} / {c['all-reduce']} / {c['collective-permute']} / {c['all-to-all']} | "
              f"{r['compile_s']:.1f} |")


if __name__ == "__main__":
    main()
