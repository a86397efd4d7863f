"""Shared test helpers: a learnable token stream and a few sharded train steps."""

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from gptjax.data import loader
from gptjax.runtime import sharding
from gptjax.training import trainer


def markov_tokens(n=4000, vocab=65, seed=0):
    """A learnable stream: each token is 3x the previous plus small noise (mod vocab)."""
    noise = np.random.default_rng(seed).integers(0, 3, n)
    out = np.zeros(n, np.int64)
    for i in range(1, n):
        out[i] = (3 * out[i - 1] + noise[i]) % vocab
    return out.astype(np.uint16)


EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
TOKENS = markov_tokens()

# A model small enough that a whole end-to-end run takes seconds, on the real corpus.
TINY_RUN = {
    "model": {"vocab_size": 65, "max_seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64},
    "data": {"corpus": "tinyshakespeare", "tokenizer": "char", "batch_size": 8},
    "optim": {"lr": 3e-3, "warmup_steps": 2, "min_lr": 3e-4},
    "log_every": 1, "eval_batch_size": 256, "keep_last": 10, "peak_flops": 1.0e11,
}


def run_steps(cfg, mesh_cfg, n_devices, steps=5):
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n_devices])
    tr = trainer.make_trainer(cfg, mesh)
    state = trainer.init_state(tr)
    step = trainer.make_train_step(tr)
    batches = loader.TrainBatches(TOKENS, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed)
    losses = []
    for s in range(steps):
        no_stop = jax.device_put(np.zeros(mesh.size, np.float32), sharding.per_device(mesh))
        state, m = step(state, None, jax.device_put(batches.at(s * cfg.data.batch_size), tr.batch_sharding), no_stop)
        losses.append(float(m["loss"]))
    return state, np.array(losses)


def gptjax_cli(*args, env=None, check=True, timeout=300):
    """`python -m gptjax.cli ARGS` in a subprocess; fails the test with its output unless check=False."""
    out = subprocess.run([sys.executable, "-m", "gptjax.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"gptjax {args} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def metrics(run_dir):
    return [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [row["loss"] for row in metrics(run_dir)]


def wait_until(condition, timeout=180.0, what="the condition"):
    """Poll until `condition()` holds; a timeout fails the test (it must never pass silently)."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


# The PyTorch reference stack: installed on the Python 3.11 lane only (this machine's CPU torch wheel
# is for 3.11), so every test that uses it carries the `torch` mark and the newest lane deselects it.
TORCH_STACK = ("torch", "transformers", "peft", "accelerate")
# Whether the running test is marked `torch`; None outside a test (collection, module fixtures).
IN_TORCH_TEST: bool | None = None


def reference(module: str):
    """An optional reference library (torch, transformers, peft, lm_eval): skipped where it is not
    installed, but a failure where GPTJAX_REQUIRE_HF=1 (CI) says it must run. A test that uses the
    PyTorch stack without the `torch` mark fails, so that no lane runs it without its references."""
    import importlib

    import pytest

    if module in TORCH_STACK and IN_TORCH_TEST is False:
        pytest.fail(f"this test uses {module} but is not marked @pytest.mark.torch (the lane without the "
                    "PyTorch reference stack would skip it instead of deselecting it)")
    if module in TORCH_STACK and os.environ.get("GPTJAX_TEST_LANE") == "newest":
        # Only a module's import gets here on that lane (its marked tests are deselected).
        pytest.skip(f"the newest lane has no {module}: the reference lane runs this", allow_module_level=True)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("GPTJAX_REQUIRE_HF") == "1":
            pytest.fail(f"GPTJAX_REQUIRE_HF=1 but {module} cannot be imported ({e}); install the test extras")
        pytest.skip(f"SKIPPING: reference {module} is not installed ({e})", allow_module_level=IN_TORCH_TEST is None)


EOT = "<|endoftext|>"


def save_hf_gpt2(directory, text, *, vocab=400, positions=128, width=48, layers=2, heads=4, init=0.02, seed=0):
    """A random transformers GPT-2 with its own byte-level BPE trained on `text`, saved as transformers
    saves it (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)."""
    torch, transformers = reference("torch"), reference("transformers")
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, bos_token=EOT)
    eot = fast.convert_tokens_to_ids(EOT)
    cfg = transformers.GPT2Config(vocab_size=len(fast), n_positions=positions, n_embd=width, n_layer=layers,
                                  n_head=heads, initializer_range=init, eos_token_id=eot, bos_token_id=eot)
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(directory)
    fast.save_pretrained(directory)
    return pathlib.Path(directory)


def snapshot(directory):
    """Every file under `directory` with its sha256, and every folder: equal snapshots mean
    nothing was touched. The run directory's lock.json counts by its presence only: it names
    whoever holds the directory now, and each training start that gets past the checks rewrites it."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory) + "/"] = None
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            out[rel] = "present" if rel == "lock.json" else hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def jsonl(path, rows):
    """`rows` written to `path` as JSON lines; returns the path."""
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_libtpu():
    """The TPU compiler, which runs on any machine; where GPTJAX_REQUIRE_LIBTPU=1 (CI) it must be there."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("libtpu") is None and not os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
        if os.environ.get("GPTJAX_REQUIRE_LIBTPU") == "1":
            pytest.fail("GPTJAX_REQUIRE_LIBTPU=1 but libtpu is not installed; run scripts/setup.sh test")
        pytest.skip("libtpu is not installed (the tpu extra, or TPU_LIBRARY_PATH)")


# English prose with code in it, for tests that need a text (the how-to and reference pages of the
# docs, in a fixed order; about 68 KB).
DOC_PAGES = ("models", "generation", "evaluation", "training", "finetuning", "reliability", "benchmarks",
             "scaling", "clusters")
DOCS_TEXT = "\n".join((pathlib.Path(__file__).parents[1] / "docs" / f"{page}.md").read_text() for page in DOC_PAGES)


def unavailable(why: str | None, flag: str, failure: str, skip: str) -> None:
    """A service or tool a test needs is missing (`why`): a failure where CI sets `flag`=1 (it
    must run there), else a loud skip."""
    import pytest

    if why:
        if os.environ.get(flag) == "1":
            pytest.fail(f"{flag}=1 but {failure}: {why}")
        pytest.skip(f"{skip}: {why}")


def browser() -> str:
    """Debian's chromium, for headless rendering checks (GPTJAX_REQUIRE_BROWSER=1 in CI)."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    unavailable(None if found else "apt-get install chromium", "GPTJAX_REQUIRE_BROWSER", "chromium is not installed",
                "SKIPPING THE BROWSER CHECK: chromium is not installed")
    return found
