"""GPT-1's task fine-tuning (`gptjax finetune`): a small model pretrained on Shakespeare learns a
task decidable from its text, the auxiliary LM weight λ changes what is learned, and every task
layout runs end to end with clear errors for bad files."""

import json
import random

import pytest
import yaml
from helpers import TINY_RUN, metrics
from helpers import gptjax_cli as gptjax

pytestmark = pytest.mark.xdist_group("gpt1")

WORDS = {0: ["the king", "my lord", "good night", "fair queen"], 1: ["o villain", "foul traitor", "base slave",
                                                                     "vile wretch"]}


def sentence(rng, label):
    """Shakespearean filler with one of the label's phrases in it: decidable from the text."""
    filler = rng.choice(["and so", "what say you", "come hither", "i pray thee", "hark"])
    return f"{filler}, {rng.choice(WORDS[label])}, {rng.choice(['now', 'anon', 'indeed'])}"


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    cfg = {**TINY_RUN, "steps": 60, "eval_every": 60, "checkpoint_every": 60, "sample_tokens": 0}
    cfg["model"] = {**cfg["model"], "max_seq_len": 64}
    (d / "pre.yaml").write_text(yaml.safe_dump(cfg))
    gptjax("train", d / "pre.yaml", "--run-dir", d / "run", "--no-progress")
    return d / "run"


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    rng = random.Random(0)
    train = [{"text": sentence(rng, y), "label": y} for y in [rng.randrange(2) for _ in range(256)]]
    test = [{"text": sentence(rng, y), "label": y} for y in [rng.randrange(2) for _ in range(128)]]
    return write(d / "train.jsonl", train), write(d / "eval.jsonl", test)


def finetune(model, task, train, evalf, run_dir, *overrides):
    gptjax("finetune", model, "--task", task, "--train", train, "--eval", evalf, "--run-dir", run_dir,
           "--no-progress", "data.batch_size=16", "optim.lr=3e-3", "eval_batch_size=32", "log_every=1", *overrides)
    return json.loads((run_dir / "eval.json").read_text())


@pytest.mark.slow
def test_classification_reaches_90_percent_and_lambda_matters(tmp_path, pretrained, classification):
    train, evalf = classification
    with_lm = finetune(pretrained, "classification", train, evalf, tmp_path / "lm", "steps=60")
    without = finetune(pretrained, "classification", train, evalf, tmp_path / "nolm", "steps=60",
                       "finetune.aux_lm_weight=0")
    assert with_lm["accuracy"] >= 0.9 and without["accuracy"] >= 0.9, (with_lm, without)
    # λ weighs the language-model loss: without it that loss drifts up as the task is learned.
    lm = [r["lm_loss"] for r in metrics(tmp_path / "lm")]
    nolm = [r["lm_loss"] for r in metrics(tmp_path / "nolm")]
    assert lm[0] == pytest.approx(nolm[0], rel=1e-6)  # the same start
    assert nolm[-1] > lm[-1] + 0.1, (lm[-1], nolm[-1])
    rows = metrics(tmp_path / "lm")
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["task_loss"] + 0.5 * rows[-1]["lm_loss"], rel=1e-5)


@pytest.mark.slow
def test_every_task_layout_runs_and_scores(tmp_path, pretrained):
    rng = random.Random(1)
    cases = {
        "entailment": lambda y: {"premise": sentence(rng, y), "hypothesis": rng.choice(WORDS[y]), "label": y},
        "similarity": lambda y: {"text_a": sentence(rng, y), "text_b": sentence(rng, y), "label": float(y)},
        "multiple_choice": lambda y: {"context": "which is kind?",
                                      "choices": [rng.choice(WORDS[y]), rng.choice(WORDS[1 - y])], "label": 0},
    }
    for task, make in cases.items():
        records = [make(rng.randrange(2)) for _ in range(64)]
        train = write(tmp_path / f"{task}.jsonl", records)
        result = finetune(pretrained, task, train, train, tmp_path / task, "steps=8")
        key = "pearson" if task == "similarity" else "accuracy"
        assert key in result and result["task"] == task, result
        if task == "similarity":
            assert "spearman" in result


@pytest.mark.slow
@pytest.mark.parametrize("content, match", [
    ('{"text": "x"}\n', r"bad\.jsonl:1: a classification example needs text, label; missing label"),
    ('{"text": "x", "label": "yes"}\n', r"bad\.jsonl:1: label = 'yes'; accepted: an integer"),
    ('{"text": "x", "label": 0.5}\n', r"float labels mean regression"),
])
def test_bad_task_files_are_refused_before_compiling(tmp_path, pretrained, content, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = gptjax("finetune", pretrained, "--task", "classification", "--train", bad, "--run-dir", tmp_path / "r",
                 check=False)
    assert out.returncode == 2 and __import__("re").search(match, out.stderr), out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_task_fine_tuning_resumes_exactly(tmp_path, pretrained, classification):
    train, evalf = classification
    same = ["optim.schedule=constant", "optim.warmup_steps=0", "checkpoint_every=4"]
    straight = finetune(pretrained, "classification", train, evalf, tmp_path / "straight", "steps=8", *same)
    finetune(pretrained, "classification", train, evalf, tmp_path / "resumed", "steps=4", *same)
    resumed = finetune(pretrained, "classification", train, evalf, tmp_path / "resumed", "steps=8", *same)
    assert [r["loss"] for r in metrics(tmp_path / "resumed")] == [r["loss"] for r in metrics(tmp_path / "straight")]
    assert resumed["accuracy"] == straight["accuracy"]


@pytest.mark.slow
def test_task_fine_tuning_runs_in_the_training_loop(tmp_path, pretrained, classification):
    """The loop every run uses: its metrics (throughput, tokens seen) beside the task's own, and its
    NaN policy, which stops the run naming the last good checkpoint instead of a data error."""
    train, evalf = classification
    finetune(pretrained, "classification", train, evalf, tmp_path / "ok", "steps=3")
    row = metrics(tmp_path / "ok")[-1]
    assert {"task_loss", "lm_loss", "tokens_per_sec", "tokens_seen", "grad_norm"} <= row.keys()
    assert row["tokens_seen"] == 3 * 16 * 64 and row["loss"] > row["task_loss"] > 0
    out = gptjax("finetune", pretrained, "--task", "classification", "--train", train, "--run-dir", tmp_path / "nan",
                 "--no-progress", "data.batch_size=16", "steps=6", "checkpoint_every=2", "faults.nan_at_step=3",
                 "nan_policy=stop", check=False)
    assert out.returncode == 1 and "non-finite loss at step 3" in out.stderr and "checkpoint is step 2" in out.stderr
