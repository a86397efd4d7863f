"""Tokenization throughput of `gptjax data prepare` beside the tokenizers' own batch encoders, in one run.

The corpus is the Gutenberg selection in $GPTJAX_DATA_DIR/gutenberg as JSON lines (documents
of 40 sentences, a few KB like web pages), repeated to --mb megabytes. For GPT-2's BPE through tiktoken and through
a Hugging Face tokenizer.json (the same encoding, converted by gptjax), the table gives MB/s of
text -> token files on disk for 1..N processes (median of --repeats, each into an empty cache),
and the library's own in-memory batch encoder on 1 and N threads for comparison. Token files
from every process count are checked to be byte-identical.

Usage: python benchmarks/tokenization.py [--mb 40] [--processes 2] [--repeats 3] [--output OUT.json]
"""

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import tokenizers

from gptjax.data import text_files
from gptjax.data import tokenizer as tok_lib


def corpus(directory: pathlib.Path, mb: float) -> tuple[pathlib.Path, list[str]]:
    books = sorted((pathlib.Path(os.environ["GPTJAX_DATA_DIR"]) / "gutenberg").glob("*.txt"))
    lines = [line for b in books for line in b.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = ["\n".join(lines[i:i + 40]) for i in range(0, len(lines), 40)]  # a few KB each, like web pages
    out, size = [], 0
    while size < mb * 1e6:
        out.extend(docs)
        size += sum(len(d.encode()) for d in docs)
    path = directory / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in out))
    return path, out


def prepare_rate(path, tokenizer, processes: int, threads: int, repeats: int) -> tuple[float, bytes]:
    rates, digest = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["GPTJAX_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            d = text_files.prepare([path], [], tokenizer, val_fraction=0.01, text_field="text", processes=processes,
                                  threads=threads)
            seconds = time.perf_counter() - t0
            digest = (d / "train.bin").read_bytes()
        rates.append(path.stat().st_size / 1e6 / seconds)
    return statistics.median(rates), digest


def batch_rate(encode, docs, repeats: int) -> float:
    size = sum(len(d.encode()) for d in docs) / 1e6
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(docs)
        times.append(time.perf_counter() - t0)
    return size / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=40)
    p.add_argument("--processes", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output")
    args = p.parse_args()
    tik = tok_lib.TiktokenTokenizer("gpt2")
    hf = tok_lib.HFTokenizer(tok_lib.hf_tokenizer_json(tik), tik.eot_id)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        path, docs = corpus(pathlib.Path(work), args.mb)
        print(f"corpus: {path.stat().st_size / 1e6:.1f} MB, {len(docs):,} documents")
        for name, tok in (("tiktoken gpt2", tik), ("tokenizers gpt2 (tokenizer.json)", hf)):
            digests = set()
            for n, threads in [(1, 1), (1, args.processes), *((n, 1) for n in range(2, args.processes + 1))]:
                rate, digest = prepare_rate(path, tok, n, threads, args.repeats)
                digests.add(digest)
                rows.append({"tokenizer": name, "what": f"gptjax data prepare, {n} process(es) x {threads} thread(s)",
                             "mb_per_sec": rate})
            assert len(digests) == 1, "token files differ between process counts"
        enc = tik._encoding
        raw = tokenizers.Tokenizer.from_str(hf.json_text)
        for threads in sorted({1, args.processes}):
            rows.append({"tokenizer": "tiktoken gpt2", "what": f"encode_ordinary_batch, {threads} thread(s)",
                         "mb_per_sec": batch_rate(lambda d, t=threads: enc.encode_ordinary_batch(d, num_threads=t),
                                                  docs, args.repeats)})
        rows.append({"tokenizer": "tokenizers gpt2 (tokenizer.json)", "what": "Tokenizer.encode_batch (its pool)",
                     "mb_per_sec": batch_rate(lambda d: raw.encode_batch(d, add_special_tokens=False), docs,
                                              args.repeats)})
    for r in rows:
        print(f"{r['tokenizer']:34s} {r['what']:40s} {r['mb_per_sec']:7.2f} MB/s")
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
