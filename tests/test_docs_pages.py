"""The quick start and the how-to pages run as written: every bash and Python block of each page, in
order, in a fresh directory. Only what a user would download is stood in for (a small GPT-2 in
Hugging Face's layout, benchmark files in their published layouts, text), a training command gets a
few steps of a tiny shape appended, and a cluster submission gets `--dry-run` (the clusters are not
here). A YAML block whose first line is `# NAME.yaml` is the file the commands after it read, and a
console block's output must be what the command prints. A block is left out only under a
`<!-- not run: why -->` line."""

import csv
import dataclasses
import gzip
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from helpers import jsonl

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = ["quickstart.md", "models.md", "training.md", "scaling.md", "evaluation.md", "generation.md",
         "finetuning.md", "clusters.md"]
# Pages of results and reference: their blocks are measurements or listings, each marked not run.
OTHER_PAGES = ["index.md", "reliability.md", "benchmarks.md", "layout.md"]
# What a training command gets appended: a few steps of a tiny shape (model fields only where the
# model is not a checkpoint's).
TINY = ["steps=3", "eval_every=3", "checkpoint_every=3", "data.batch_size=8", "eval_batch_size=8", "sample_tokens=8"]
TINY_MODEL = ["model.n_layers=2", "model.d_model=64", "model.n_heads=2", "model.max_seq_len=64"]
FENCE = re.compile(r"(?:<!--\s*(?P<note>[^>]*?)\s*-->[ \t]*\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    body: str
    not_run: str | None  # the reason given, for a block left out


def blocks(page: str) -> list[Block]:
    out = []
    for m in FENCE.finditer((DOCS / page).read_text()):
        note = m["note"] or ""
        reason = note.removeprefix("not run:").strip() if note.startswith("not run:") else None
        out.append(Block(m["lang"], m["body"], reason))
    return out


def _file_name(block: Block) -> str | None:
    first = block.body.splitlines()[0]
    m = re.fullmatch(r"# ([\w./-]+\.ya?ml)", first)
    return m[1] if m and block.lang == "yaml" else None


def script(page: str) -> str:
    """The page as one bash script: its commands, Python blocks and files, in order."""
    py = shlex.quote(sys.executable)
    lines = ["set -euo pipefail", f"PY={py}", f"TINY=({' '.join(TINY)})", f"TINY_MODEL=({' '.join(TINY_MODEL)})",
             # `gptjax` is this interpreter's gptjax, with the appendices the module docstring names.
             'gptjax() {',
             '  local extra=()',
             '  case "$1" in',
             '    train) extra=("${TINY[@]}" --no-progress)',
             '           grep -qs "^init_from:" "$2" || extra+=("${TINY_MODEL[@]}");;',
             '    finetune) extra=("${TINY[@]}" --no-progress);;',
             '    launch) if [ "$2" = local ]; then extra=("${TINY[@]}" "${TINY_MODEL[@]}"); else extra=(--dry-run); fi;;',
             '    sweep) if [ "$2" = run ] && [[ " $* " == *" --launcher slurm "* ]]; then extra=(--dry-run); fi;;',
             '  esac',
             '  echo "+ gptjax $* ${extra[*]}" >&2',
             '  "$PY" -m gptjax.cli "$@" "${extra[@]}"',
             '}']
    for i, block in enumerate(blocks(page)):
        if block.not_run is not None:
            continue
        if block.lang == "bash":
            lines.append(block.body)
        elif block.lang == "python":
            lines += [f'echo "+ python block {i}" >&2', '"$PY" - <<\'GPTJAX_PY\'', block.body, "GPTJAX_PY"]
        elif block.lang == "console":
            lines += _console(block, i)
        elif _file_name(block):
            lines += [f"cat > {_file_name(block)} <<'GPTJAX_FILE'", block.body, "GPTJAX_FILE"]
    return "\n".join(lines) + "\n"


def _console(block: Block, i: int) -> list[str]:
    """`$ command` lines with the output shown after each: the command must print exactly that."""
    out, parts = [], re.split(r"^\$ (.*)\n", block.body + "\n", flags=re.M)[1:]
    for j, (command, expected) in enumerate(zip(parts[::2], parts[1::2])):
        name = f"expected-{i}-{j}.txt"
        out += [f"cat > {name} <<'GPTJAX_OUT'", expected.rstrip("\n"), "GPTJAX_OUT",
                f"{command} > got-{i}-{j}.txt", f"diff -u {name} got-{i}-{j}.txt"]
    return out


def test_every_block_is_run_or_says_why_not():
    """A page's bash and Python blocks run unless marked, each mark gives a reason, and the pages of
    results run nothing; so no command of the docs is silently untested."""
    for page in PAGES + OTHER_PAGES:
        for block in blocks(page):
            if block.not_run is not None:
                assert len(block.not_run) > 20, f"{page}: a 'not run' mark without its reason: {block.body[:80]}"
            elif page in OTHER_PAGES:
                assert block.lang not in ("bash", "python", "console"), f"{page}: an unmarked command: {block.body[:80]}"
    assert set(PAGES + OTHER_PAGES) == {p.name for p in DOCS.glob("*.md")}, "a docs page is in neither list"
    marked = [(page, b.body[:40]) for page in PAGES for b in blocks(page) if b.not_run is not None]
    assert len(marked) <= 3, f"the how-to pages leave out more than the lm-eval examples: {marked}"


def test_the_script_runs_what_the_page_shows():
    text = script("finetuning.md")
    assert "gptjax train ft.yaml --run-dir runs/ft\n" in text and "cat > ft.yaml <<'GPTJAX_FILE'\n# ft.yaml\n" in text
    assert "lm_eval.simple_evaluate" not in script("evaluation.md")
    assert "diff -u expected-" in script("models.md")


# ---------------------------------------------------------------------------------------------------
# What a user would have downloaded.

def _shakespeare() -> str:
    path = pathlib.Path(os.environ.get("GPTJAX_DATA_DIR", "")) / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip("GPTJAX_DATA_DIR does not hold tinyshakespeare.txt")
    return path.read_text()


@pytest.fixture(scope="module")
def gpt2_hf(tmp_path_factory):
    """A small GPT-2 (2 layers of 64, 1,024 positions, GPT-2's BPE) in transformers' layout, made
    by gptjax's own export of a 2-step run: what a download of openai-community/gpt2 looks like."""
    work = tmp_path_factory.mktemp("gpt2-hf")
    cli = [sys.executable, "-m", "gptjax.cli"]
    subprocess.run(cli + ["train", "gpt2", "model.n_layers=2", "model.d_model=64", "model.n_heads=2",
                          "data.seq_len=64", "data.batch_size=8", "steps=2", "eval_every=2", "checkpoint_every=2",
                          "eval_batch_size=8", "sample_tokens=0", "--no-progress", "--run-dir", str(work / "run")],
                   check=True, capture_output=True, timeout=600)
    subprocess.run(cli + ["convert", str(work / "run"), str(work / "gpt2-hf"), "--to", "hf"], check=True,
                   capture_output=True, timeout=600)
    return work / "gpt2-hf"


def _sentences(text: str, n: int, start: int = 0) -> list[str]:
    lines = [line for line in text.splitlines() if len(line) > 20]
    return lines[start:start + n]


def _finetuning_inputs(work: pathlib.Path, text: str) -> None:
    (work / "corpus").mkdir()
    (work / "corpus" / "plays.txt").write_text(text[:60000])
    (work / "more").mkdir()
    jsonl(work / "more" / "docs.jsonl", [{"text": text[i:i + 3000]} for i in range(60000, 90000, 3000)])
    lines = _sentences(text, 200)
    jsonl(work / "chats.jsonl", [{"prompt": a, "response": b} for a, b in zip(lines[::2], lines[1::2])])
    jsonl(work / "sst2_train.jsonl", [{"text": s, "label": i % 2} for i, s in enumerate(lines[:64])])
    jsonl(work / "sst2_dev.jsonl", [{"text": s, "label": i % 2} for i, s in enumerate(lines[64:80])])


def _evaluation_inputs(work: pathlib.Path, text: str) -> None:
    (work / "wiki.test.raw").write_text(text[:3000])
    lines = _sentences(text, 60)
    jsonl(work / "hellaswag_val.jsonl", [{"ind": i, "activity_label": "Reading", "ctx_a": lines[i],
                                          "ctx_b": "then", "ctx": lines[i], "endings": lines[i + 1:i + 5],
                                          "label": str(i % 4), "split": "val"} for i in range(8)])
    for split, rows in (("test", lines[:6]), ("dev", lines[6:12])):
        (work / f"mmlu_{split}").mkdir()
        with open(work / f"mmlu_{split}" / f"english_literature_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([[row, "yes", "no", "maybe", "never", "ABCD"[i % 4]] for i, row in enumerate(rows)])
    problems = [{"task_id": "Docs/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n',
                 "canonical_solution": "    return a + b\n", "entry_point": "add",
                 "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
                {"task_id": "Docs/1", "prompt": 'def twice(s):\n    """Return s twice."""\n',
                 "canonical_solution": "    return s + s\n", "entry_point": "twice",
                 "test": "def check(candidate):\n    assert candidate('ab') == 'abab'\n"}]
    with gzip.open(work / "HumanEval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in problems)


def _scaling_inputs(work: pathlib.Path, text: str) -> None:
    (work / "held.txt").write_text(text[-20000:])
    (work / "wiki.test.raw").write_text(text[-40000:-20000])


# The longer pages run on the reference lane (`workflow`), so that each lane stays near 20 minutes.
LONG = ("training.md", "scaling.md", "finetuning.md")


@pytest.mark.slow
@pytest.mark.parametrize("page", [pytest.param(p, marks=[pytest.mark.workflow] if p in LONG else []) for p in PAGES])
def test_page_runs_as_written(page, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("experiments", "docs"):
        (work / name).symlink_to(ROOT / name)
    text = _shakespeare()
    if page in ("models.md", "finetuning.md", "evaluation.md"):
        shutil.copytree(request.getfixturevalue("gpt2_hf"), work / "gpt2-hf")
    {"finetuning.md": _finetuning_inputs, "evaluation.md": _evaluation_inputs,
     "scaling.md": _scaling_inputs}.get(page, lambda *_: None)(work, text)
    (tmp_path / "page.sh").write_text(script(page))
    out = subprocess.run(["bash", str(tmp_path / "page.sh")], cwd=work, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"{page}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    CHECKS.get(page, lambda *_: None)(work, out.stdout)


def _quickstart(work, stdout):
    assert (work / "runs" / "my_text" / "checkpoints").is_dir()
    assert re.search(r"^gptjax is.+", stdout, re.M | re.S), stdout[-1000:]  # the prompt, continued


def _models(work, stdout):
    assert "(1, 3, 50257)" in stdout or "(1, 3, 50304)" in stdout, stdout[-1000:]
    for d in ("out-hf", "out-gptjax", "gpt2-gptjax", "shakespeare-hf"):
        assert (work / d).is_dir(), d
    assert json.loads((work / "shakespeare-hf" / "config.json").read_text())["model_type"] == "gpt2"


def _training(work, stdout):
    assert (work / "runs" / "profiled" / "profile" / "summary.txt").is_file()
    assert json.loads((work / "plan.json").read_text())["peak_bytes"] > 0


def _scaling(work, stdout):
    sweep = work / "runs" / "sweeps" / "my_sweep"
    assert (sweep / "report.md").is_file() and (sweep / "results.csv").is_file() and (sweep / "report.html").is_file()
    plan = json.loads((work / "runs" / "plans" / "my_sweep_h100" / "plan.json").read_text())
    assert len(plan["runs"]) == 4 and plan["programs_compiled"] == 4 and plan["fits"]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert len(results) == 4 and all(r["evals"]["wiki"]["added_by"] == "gptjax sweep eval" for r in results)


def _evaluation(work, stdout):
    assert "perplexity" in json.loads((work / "ppl.json").read_text())["results"]
    for task in ("hellaswag", "mmlu", "humaneval"):
        assert task in stdout, task


def _generation(work, stdout):
    assert "4 [" in stdout and "ROMEO:" in stdout


def _finetuning(work, stdout):
    for d in ("ft-hf", "lora-merged", "lora-peft"):
        assert (work / d).is_dir(), d
    assert (work / "lora-peft" / "adapter_config.json").is_file()
    assert "accuracy" in json.loads((work / "runs" / "sst2" / "eval.json").read_text())


def _clusters(work, stdout):
    assert (work / "runs" / "shakespeare_char" / "result.json").is_file()
    assert "#SBATCH --nodes=4" in stdout and "gcloud compute tpus" in stdout and "kind: JobSet" in stdout


CHECKS = {"quickstart.md": _quickstart, "models.md": _models, "training.md": _training, "scaling.md": _scaling,
          "evaluation.md": _evaluation, "generation.md": _generation, "finetuning.md": _finetuning,
          "clusters.md": _clusters}
