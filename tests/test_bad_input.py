"""The bad-input catalogue: every case gets exactly its clear error (what was wrong, the value seen,
what is accepted), exit code 2, no traceback, and leaves the run directory exactly as it was.

README's "Reliability" section lists the same cases; keep them in step.
"""

import json
import os
import pickle
import shutil

import pytest
import yaml
from helpers import TINY_RUN, snapshot
from helpers import gptjax_cli as gptjax

from gptjax import cli

TINY = {**TINY_RUN, "steps": 4, "eval_every": 4, "checkpoint_every": 4, "sample_tokens": 5}




@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A config file, a finished run directory, and a scratch folder for each case's files."""
    d = tmp_path_factory.mktemp("bad")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    gptjax("train", d / "tiny.yaml", "--run-dir", d / "run", "--no-progress")
    return d


def _token_dir(d, *, meta=None, train=True):
    t = d / "tokens"
    t.mkdir(exist_ok=True)
    if train:
        (t / "train.bin").write_bytes(bytes(200))
    (t / "val.bin").write_bytes(bytes(200))
    if meta is not None:
        (t / "meta.pkl").write_bytes(meta)
    return t


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _hf_dir(d, config, files=()):
    h = d / "hf"
    h.mkdir(exist_ok=True)
    (h / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name in files:
        (h / name).write_bytes(b"\x80\x02}q\x00.")
    return h


def _damaged_run(world, d, **changes):
    """A copy of the run whose files are changed as `changes` says."""
    run = d / "run_copy"
    shutil.copytree(world / "run", run)
    for name, text in changes.items():
        (run / name.replace("__", ".")).write_text(text)
    return run


CFG, RUN = "{cfg}", "{run}"
# (case, arguments with {cfg}/{run}/{d} placeholders or a builder, the exact message fragment)
CATALOGUE = [
    ("config file missing", ["train", "{d}/nope.yaml"], "config file '{d}/nope.yaml' does not exist"),
    ("config not a mapping", lambda w, d: ["train", _write(d / "list.yaml", "- 1\n- 2\n")],
     "expected a mapping of sections, got list"),
    ("unknown field, nearest named", ["train", CFG, "optim.learning_rate=1"],
     "TrainConfig.optim: unknown field 'learning_rate'; valid fields: name, lr, min_lr"),
    ("unknown section", ["train", CFG, "optimizer.lr=1"], "TrainConfig: unknown field 'optimizer'; did you mean optim?"),
    ("value not among the accepted", ["train", CFG, "model.position=rope"],
     "`model.position`: Cannot convert 'rope' (<class 'str'>) into one of: learned, rotary, alibi, none"),
    ("override into a value", ["train", CFG, "steps.x=1"], "override 'steps.x=1': 'steps' is not a section"),
    ("negative learning rate", ["train", CFG, "optim.lr=-1"], "OptimConfig.lr = -1.0 is invalid: must be positive"),
    ("option the optimizer ignores", ["train", CFG, "optim.name=adafactor", "optim.b2=0.99"],
     "OptimConfig.b2 = 0.99 is not used by 'adafactor'"),
    ("window beyond the context", ["train", CFG, "data.seq_len=64"],
     "data.seq_len = 64 exceeds model.max_seq_len = 32"),
    ("two mesh axes of -1", ["train", CFG, "mesh.fsdp=-1"], "must be positive, with at most one -1"),
    ("batch vs data parallelism", ["train", CFG, "data.batch_size=7"],
     "data.batch_size / optim.grad_accum (the micro-batch) = 7 is not divisible by the data-parallel size 8"),
    ("unknown preset", ["params", "gpt-2"], "unknown preset 'gpt-2'; did you mean gpt2"),
    ("corpus file missing", ["train", CFG, "data.corpus=/nonexistent/corpus.txt"],
     "data.corpus = '/nonexistent/corpus.txt': no such file"),
    ("empty corpus", lambda w, d: ["train", str(w / "tiny.yaml"), f"data.corpus={_write(d / 'empty.txt', '')}"],
     "the corpus is empty"),
    ("vocabulary too small for the data", ["train", CFG, "model.vocab_size=40"],
     "is beyond the model's vocabulary (model.vocab_size = 40); set model.vocab_size >= "),
    ("unknown tokenizer", ["train", CFG, "data.tokenizer=gpt5"], "`data.tokenizer`: Cannot convert 'gpt5' (<class 'str'>) into one of: char, gpt2"),
    ("token directory without train.bin", lambda w, d: ["train", str(w / "tiny.yaml"),
                                                        f"data.token_dir={_token_dir(d, train=False)}"],
     "has no train.bin (nanoGPT's prepare.py layout, or the output of gptjax data prepare)"),
    ("meta.pkl that would run code", lambda w, d: ["train", str(w / "tiny.yaml"),
                                                   f"data.token_dir={_token_dir(d, meta=pickle.dumps(Evil()))}"],
     "meta.pkl references posix.system; only plain dicts, strings and integers are accepted"),
    ("meta.pkl without a vocabulary", lambda w, d: ["train", str(w / "tiny.yaml"),
                                                    f"data.token_dir={_token_dir(d, meta=pickle.dumps({'x': 1}))}"],
     "expected a dict with 'itos' mapping int -> str"),
    ("resume with another model", ["train", CFG, "--run-dir", RUN, "model.n_layers=3"],
     "cannot be resumed with this config: it changes its checkpointed state"),
    ("resume with another optimizer", ["train", CFG, "--run-dir", RUN, "optim.name=lion"],
     "optim.name: 'adamw' in"),
    ("run directory's config unreadable", lambda w, d: ["train", str(w / "tiny.yaml"), "--run-dir",
                                                        str(_damaged_run(w, d, config__yaml="model: {widthh: 3}\n"))],
     "cannot be read by this gptjax: TrainConfig.model: unknown field 'widthh'"),
    ("sample from a directory that is no run", lambda w, d: ["sample", str(_mkdir(d / "empty"))],
     "is not a pretrained model directory: it holds no gptjax_config.json"),
    ("sample with a tokenizer file of unknown kind", lambda w, d: [
        "sample", str(_damaged_run(w, d, tokenizer__json='{"kind": "sentencepiece"}'))],
     "tokenizer kind = 'sentencepiece' is not one of 'tiktoken', 'char', 'hf'"),
    ("sampling option out of range", ["sample", RUN, "--top-p", "2"], "top_p = 2.0 must be in (0, 1]"),
    ("pickle-only Hugging Face directory", lambda w, d: ["convert", str(_hf_dir(d, {"model_type": "gpt2"},
                                                                                ["pytorch_model.bin"])),
                                                         str(d / "out"), "--to", "gptjax"],
     "Pickle checkpoints can execute arbitrary code when loaded, so gptjax never opens them"),
    ("config.json that is not JSON", lambda w, d: ["convert", str(_hf_dir(d, "{not json")), str(d / "out"), "--to",
                                                   "gptjax"], "config.json is not valid JSON"),
    ("unsupported Hugging Face model type", lambda w, d: ["convert", str(_hf_dir(d, {"model_type": "t5"})),
                                                          str(d / "out"), "--to", "gptjax"],
     "model_type = 't5'"),
    ("sweep file that is not a mapping", lambda w, d: ["sweep", "run", _write(d / "sweep.yaml", "- 1\n"),
                                                       "--dry-run"], "expected a mapping (name, base, grid, ...), got list"),
    ("sweep member with an unknown field", lambda w, d: [
        "sweep", "run", _write(d / "sweep.yaml", f"base: {w / 'tiny.yaml'}\ngrid: {{optim.lrr: [1.0e-3]}}\n"),
        "--dry-run"], "run lrr0.001-seed0: TrainConfig.optim: unknown field 'lrr'; did you mean lr?"),
    ("search distribution with an unknown field", lambda w, d: [
        "sweep", "search", _write(d / "sweep.yaml", f"base: {w / 'tiny.yaml'}\nsearch: {{trials: 2, params: "
                                                     "{optim.lr: {distribution: uniform, low: 0.1, hihg: 1}}}\n"),
        "--run-dir", str(d / "s")], "SweepConfig.search.params.optim.lr: unknown field 'hihg'; did you mean high?"),
    ("sweep zip lists of unequal length", lambda w, d: [
        "sweep", "run", _write(d / "sweep.yaml", f"base: {w / 'tiny.yaml'}\nzip: {{seed: [1, 2], steps: [3]}}\n"),
        "--dry-run"], "zip lists must have equal lengths, got {{'seed': 2, 'steps': 1}}"),
    ("relative run directory for a multi-host backend", ["launch", "tpu", CFG, "--tpu-name", "p", "--zone", "z",
                                                         "--run-dir", "runs/x", "--dry-run"],
     "tpu runs span hosts, so give gs://BUCKET/..., s3://BUCKET/... or an absolute path"),
    ("unsupported storage scheme", ["train", CFG, "--run-dir", "ftp://host/run"],
     "ftp://host/run: the scheme ftp:// is not supported; use a local path, gs:// or s3://"),
    ("YAML syntax error in a config file", lambda w, d: ["train", _write(d / "bad.yaml", "model: {d_model: 64\n")],
     "bad.yaml: line 2, column 1: while parsing a flow mapping expected ',' or '}}', but got '<stream end>' "
     "(YAML syntax)"),
    ("YAML syntax error in an override", ["train", CFG, "optim.lr=[1"],
     "override 'optim.lr=[1': line 1, column 3: while parsing a flow sequence expected ',' or ']', but got "
     "'<stream end>' (YAML syntax)"),
    ("YAML syntax error in a sweep file", lambda w, d: ["sweep", "run", _write(d / "sweep.yaml", "grid: [1\n"),
                                                        "--dry-run"],
     "sweep.yaml: line 2, column 1: while parsing a flow sequence expected ',' or ']'"),
    ("a key given twice", lambda w, d: ["train", _write(d / "twice.yaml", yaml.safe_dump(TINY) + "steps: 6\n")],
     "twice.yaml: 'steps' is given twice, on line 23 and on line 24; keep one of them"),
    ("a width that is not a number in a sweep", lambda w, d: [
        "sweep", "run", _write(d / "sweep.yaml", f"base: {w / 'tiny.yaml'}\nhead_dim: 8\n"
                                                 "grid: {model.d_model: [big]}\n"), "--dry-run"],
     "model.d_model = 'big' is invalid; accepted: a positive integer (a multiple of head_dim = 8)"),
    ("convert into an existing directory", ["convert", RUN, "{d}", "--to", "gptjax"],
     "{d} already exists; choose a new directory or pass --overwrite"),
    ("unknown-character policy not among the accepted", ["train", CFG, "data.unknown_chars=ignore"],
     "`data.unknown_chars`: Cannot convert 'ignore' (<class 'str'>) into one of: error, drop, replace"),
    ("a model whose state alone exceeds the device", ["train", "gpt2-xl", "data.batch_size=8", "--run-dir",
                                                        "{d}/big"],
     "this run does not fit: per device its parameters (5.80 GiB), their gradients (as much) and optimizer state "
     "(11.61 GiB) need 23.21 GiB before any activation"),
    ("prompt ids that are not numbers", ["sample", RUN, "--prompt-ids", "a,b"],
     "--prompt-ids 'a,b': expected token ids separated by commas, such as 15496,995"),
    ("prompt id beyond the vocabulary", ["sample", RUN, "--prompt-ids", "1,99999", "--max-new-tokens", "2"],
     "prompt 0 holds token id 99999, outside the model's vocabulary [0, 65)"),
    ("fewer than one new token", ["sample", RUN, "--max-new-tokens", "-3"], "max_new_tokens = -3 must be >= 1"),
    ("sweep file missing", ["sweep", "run", "{d}/nope.yaml", "--dry-run"], "sweep file '{d}/nope.yaml' does not exist"),
    ("warm start from a directory that holds no checkpoint", ["train", CFG, "init_from={d}", "--run-dir", "{d}/new"],
     "init_from = '{d}' is not a Hugging Face directory (config.json + safetensors), a gptjax directory"),
    ("gptjax directory with a damaged weights file", lambda w, d: ["sample", str(_damaged_native(d)), "--prompt-ids",
                                                                   "1,2"],
     "does not match its sha256 in the manifest (corrupted or truncated); write it again"),
    ("run directory that is a file", lambda w, d: ["train", str(w / "tiny.yaml"), "--run-dir",
                                                   _write(d / "a_file", "x")],
     "is a file; give a new directory, an empty one or a run directory"),
    ("run directory holding someone else's files", lambda w, d: [
        "train", str(w / "tiny.yaml"), "--run-dir", os.path.dirname(_write(_mkdir(d / "thesis") / "chapter1.tex", "x"))],
     "is not empty and holds no gptjax run (no config.yaml; it holds chapter1.tex)"),
    ("warm start from a truncated safetensors file", lambda w, d: [
        "train", str(w / "tiny.yaml"), f"init_from={_truncated_export(w, d)}", "--run-dir", str(d / "new")],
     "model.safetensors is not a readable safetensors file (Error while deserializing header"),
]


def _truncated_export(world, d):
    """The finished run exported for Hugging Face, its weights file cut in half."""
    out = d / "hf_export"
    assert cli.main(["convert", str(world / "run"), str(out), "--to", "hf"]) == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return out


def _damaged_native(d):
    """A save_pretrained directory with one byte of its weights flipped."""
    from gptjax import init_model, save_pretrained
    from gptjax.config import ModelConfig

    out = save_pretrained(init_model(ModelConfig(vocab_size=50, max_seq_len=32, d_model=32, n_layers=1, n_heads=2)),
                          d / "native")
    victim = max((p for p in (out / "params").rglob("*") if p.is_file() and "/d/" in str(p)),
                 key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    return out


def _write(path, text):
    path.write_text(text)
    return str(path)


def _mkdir(path):
    path.mkdir(exist_ok=True)
    return path


def test_the_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 50 and len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.slow
@pytest.mark.parametrize("case,args,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_gets_its_message_and_damages_nothing(world, tmp_path, capsys, case, args, message):
    before = snapshot(world / "run")
    fill = {"cfg": str(world / "tiny.yaml"), "run": str(world / "run"), "d": str(tmp_path)}
    argv = args(world, tmp_path) if callable(args) else [a.format(**fill) for a in args]
    new_dir = argv[argv.index("--run-dir") + 1] if "--run-dir" in argv else None
    new_dir = new_dir if new_dir is not None and not os.path.exists(new_dir) and "://" not in new_dir else None
    rc = cli.main(argv + (["--no-progress"] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit code {rc}\n{err}"
    assert message.format(**fill) in err, f"{case}: expected {message!r} in\n{err}"
    assert "Traceback" not in err
    assert snapshot(world / "run") == before, f"{case} changed the run directory"
    assert new_dir is None or not os.path.exists(new_dir), f"{case} created {new_dir}"
