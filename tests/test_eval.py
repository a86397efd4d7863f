"""`gptjax eval` and the lm-eval model against references no one here wrote: transformers' sliding-
window perplexity, and lm-evaluation-harness with its own Hugging Face model on the same weights."""

import json
import math

import numpy as np
import pytest
from helpers import DOCS_TEXT, jsonl, reference

from gptjax import cli
from gptjax.evals import evaluate, scorer

pytestmark = pytest.mark.xdist_group("eval")

TEXT = DOCS_TEXT[:6000]
# hf_dir (conftest): a GPT-2 with 128 positions; a wide initialisation makes predictions peaked, so
# choices differ by more than rounding.
HF_TEXT, HF_OPTIONS = TEXT, {"init": 0.3}


@pytest.fixture(scope="module")
def ours(hf_dir):
    import gptjax

    return gptjax.from_pretrained(hf_dir)


def _hf_sliding_window(hf_dir, ids, max_length, stride):
    """transformers' perplexity recipe (docs: perplexity of fixed-length models), with each window's
    loss weighted by the number of tokens it really scores."""
    torch, transformers = reference("torch"), reference("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + max_length, ids.size(1))
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())  # the labels the shifted loss averages over
        nll_sum += float(loss) * scored
        n_tokens += scored
        prev_end = end
        if end == ids.size(1):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("stride", [48, 128], ids=["overlapping", "disjoint"])
def test_perplexity_equals_transformers_sliding_window(hf_dir, ours, stride):
    ids = ours.tokenizer.encode(TEXT)
    assert len(ids) > 3 * 128
    got = scorer.perplexity(scorer.Scorer(ours, batch_size=3, progress=False), ids,
                            lambda run: len(ours.tokenizer.decode(run).encode()), stride)
    want, n_tokens = _hf_sliding_window(hf_dir, ids, 128, stride)
    assert got["tokens"] == n_tokens
    assert got["perplexity"] == pytest.approx(want, rel=1e-4)


@pytest.mark.torch
def test_eval_perplexity_command_writes_its_report(hf_dir, ours, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "out.json"
    rc = cli.main(["eval", str(hf_dir), "--task", "perplexity", "--data", str(text), "--stride", "64",
                   "--output", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    result = report["results"]["perplexity"]
    ids = [ours.tokenizer.eot_id] + ours.tokenizer.encode(TEXT)  # end-of-text first: every token is predicted
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == len(TEXT.encode())
    assert result["bits_per_byte"] == pytest.approx(math.log(result["perplexity"]) * result["tokens"]
                                                    / math.log(2) / result["bytes"], rel=1e-12)
    assert result["perplexity"] == pytest.approx(_hf_sliding_window(hf_dir, ids, 128, 64)[0], rel=1e-4)
    assert report["model"]["params_sha256"] == evaluate.params_sha256(ours)
    assert report["versions"]["jax"] and report["task"] == "perplexity"
    assert "perplexity" in capsys.readouterr().out


def _windows(rng, n, vocab, longest):
    out = []
    for _ in range(n):
        context = rng.integers(1, vocab, rng.integers(1, longest)).tolist()
        out.append((context, rng.integers(1, vocab, rng.integers(1, 6)).tolist()))
    return out


@pytest.mark.torch
@pytest.mark.slow
def test_batching_and_buckets_change_no_score(ours):
    rng = np.random.default_rng(0)
    pairs = _windows(rng, 13, ours.cfg.vocab_size, 200)  # some longer than the 128-token context
    one = scorer.Scorer(ours, batch_size=1, progress=False)
    many = scorer.Scorer(ours, batch_size=5, progress=False)
    a, b = one.loglikelihood_tokens(pairs), many.loglikelihood_tokens(pairs)
    assert one.truncated == many.truncated == sum(len(c) + len(x) > 129 for c, x in pairs) > 0
    assert [g for _, g in a] == [g for _, g in b]
    np.testing.assert_allclose([s for s, _ in a], [s for s, _ in b], rtol=1e-5)
    # Against the model itself: the continuation's summed log-softmax, and greedy means argmax.
    import jax

    context, continuation = pairs[0]
    whole = (context + continuation)[-129:]
    logp = np.asarray(jax.nn.log_softmax(ours(np.asarray([whole[:-1]]))))[0]
    k = len(continuation)
    picked = logp[np.arange(len(whole) - 1 - k, len(whole) - 1), continuation]
    assert a[0][0] == pytest.approx(float(picked.sum()), rel=1e-5)
    assert a[0][1] == bool(np.all(logp[len(whole) - 1 - k:].argmax(-1) == continuation))


MC_ROWS = [
    {"context": TEXT[i * 40:i * 40 + 30], "choices": [TEXT[j:j + 12] for j in (i * 7, i * 11 + 3, i * 13 + 5)],
     "label": i % 3}
    for i in range(1, 13)
]
WORD_ROWS = [{"text": " ".join(TEXT[i * 50:i * 50 + 60].split())} for i in range(1, 9)]




def _harness_tasks(tmp_path):
    """Three local lm-eval tasks: multiple choice, last word (loglikelihood) and rolling perplexity."""
    mc, words = jsonl(tmp_path / "mc.jsonl", MC_ROWS), jsonl(tmp_path / "words.jsonl", WORD_ROWS)

    def local(name, path, **config):
        return {"task": name, "dataset_path": "json", "test_split": "test",
                "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(tmp_path / "hf")}, **config}

    return [
        local("local_mc", mc, output_type="multiple_choice", doc_to_text="{{context}}",
              doc_to_choice="{{choices}}", doc_to_target="{{label}}",
              metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
        local("local_word", words, output_type="loglikelihood",
              doc_to_text="{{text.split(' ')[:-1]|join(' ')}}", doc_to_target="{{' ' + text.split(' ')[-1]}}",
              metric_list=[{"metric": "perplexity"}, {"metric": "acc"}]),
        local("local_rolling", words, output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="{{text}}",
              metric_list=[{"metric": "word_perplexity"}]),
    ]


def _evaluate(model, task_configs):
    lm_eval = reference("lm_eval")
    return lm_eval.simple_evaluate(model=model, tasks=task_configs, log_samples=True, bootstrap_iters=0)


@pytest.mark.torch
@pytest.mark.slow
def test_harness_model_matches_lm_evals_hf_model_and_gptjax_eval(hf_dir, tmp_path):
    reference("lm_eval")
    from lm_eval.models.huggingface import HFLM

    import gptjax.harness

    configs = _harness_tasks(tmp_path)
    theirs = _evaluate(HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=4), configs)
    mine = _evaluate(gptjax.harness.GptjaxLM(str(hf_dir), batch_size=4), configs)
    for task in ("local_mc", "local_word", "local_rolling"):
        for a, b in zip(theirs["samples"][task], mine["samples"][task], strict=True):
            assert a["doc_id"] == b["doc_id"]
            for x, y in zip(a["resps"], b["resps"], strict=True):
                x, y = x[0], y[0]
                lx, ly = (x[0], y[0]) if isinstance(x, (list, tuple)) else (x, y)
                assert ly == pytest.approx(lx, rel=1e-4, abs=1e-4), task
                if isinstance(x, (list, tuple)):
                    assert bool(x[1]) == bool(y[1]), task
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert mine["results"][task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
    # Distinct answers, so the accuracies are not a tie-breaking artefact.
    assert 0 < theirs["results"]["local_mc"]["acc,none"] < 1

    # gptjax eval on the same files gives lm-eval's numbers.
    out = tmp_path / "mc.json"
    assert cli.main(["eval", str(hf_dir), "--task", "mc", "--data", str(tmp_path / "mc.jsonl"), "--output",
                     str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())["results"]["mc"]
    for metric in ("acc", "acc_norm"):
        assert result[metric] == pytest.approx(theirs["results"]["local_mc"][f"{metric},none"], abs=1e-12)


@pytest.mark.torch
def test_lambada_reports_accuracy_and_perplexity_from_the_scorer(hf_dir, ours, tmp_path):
    data = jsonl(tmp_path / "lambada.jsonl", WORD_ROWS)
    out = tmp_path / "lambada.json"
    assert cli.main(["eval", str(hf_dir), "--task", "lambada", "--data", str(data), "--output", str(out),
                     "--no-progress"]) == 0
    result = json.loads(out.read_text())["results"]["lambada"]
    s = scorer.Scorer(ours, progress=False)
    pairs = [(" ".join(r["text"].split(" ")[:-1]), " " + r["text"].split(" ")[-1]) for r in WORD_ROWS]
    scores = scorer.loglikelihood(s, ours.tokenizer, pairs)
    assert result["perplexity"] == pytest.approx(math.exp(-np.mean([x for x, _ in scores])), rel=1e-9)
    assert result["acc"] == pytest.approx(np.mean([g for _, g in scores]))


@pytest.mark.torch
def test_few_shot_prompts_hold_demonstrations_from_the_pool(hf_dir, tmp_path):
    data, pool = jsonl(tmp_path / "mc.jsonl", MC_ROWS[:4]), jsonl(tmp_path / "pool.jsonl", MC_ROWS[4:])
    runs = {}
    for shots in (0, 2):
        out = tmp_path / f"{shots}.json"
        assert cli.main(["eval", str(hf_dir), "--task", "mc", "--data", str(data), "--fewshot-data", str(pool),
                         "--shots", str(shots), "--output", str(out), "--no-progress"]) == 0
        runs[shots] = json.loads(out.read_text())
    assert runs[2]["shots"] == 2 and runs[2]["results"]["mc"]["items"] == 4
    # Demonstrations lengthen every prompt: the same items, different log-likelihoods.
    assert runs[2]["results"]["mc"]["requests"] == runs[0]["results"]["mc"]["requests"] == 12


@pytest.mark.torch
def test_humaneval_runs_generated_code_only_when_allowed(hf_dir, tmp_path, capsys):
    problems = jsonl(tmp_path / "he.jsonl", [
        {"task_id": f"t/{i}", "prompt": f"def f{i}(x):\n", "test": f"def check(f):\n    assert f(1) == {i}\n",
         "entry_point": f"f{i}"} for i in range(2)])
    args = ["eval", str(hf_dir), "--task", "humaneval", "--data", str(problems), "--max-new-tokens", "8",
            "--no-progress"]
    assert cli.main(args) == 2
    assert "--allow-code-execution" in capsys.readouterr().err
    out = tmp_path / "he.json"
    assert cli.main(args + ["--allow-code-execution", "--samples", "2", "--k", "1", "--k", "2",
                            "--temperature", "1.0", "--output", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["humaneval"]
    # A random model writes no working function body.
    assert result["pass@1"] == result["pass@2"] == 0.0 and result["n_samples"] == 2 and result["problems"] == 2


@pytest.mark.parametrize("args, message", [
    (["--task", "hellaswagg", "--data", "x"], "unknown task 'hellaswagg'; known tasks: perplexity, mc,"),
    (["--task", "mc"], "--data FILE is required for task 'mc'"),
    (["--task", "mc", "--data", "{mc}", "--shots", "2"], "shots = 2 needs --fewshot-data FILE"),
    (["--task", "perplexity", "--data", "{text}", "--stride", "0"], "stride = 0; expected 1..128"),
    (["--task", "perplexity", "--data", "{missing}"], "no such file; expected a UTF-8 text file"),
    (["--task", "mc", "--data", "{bad}"], "bad.jsonl:2"),
    (["--task", "mc", "--data", "{mc}", "--batch-size", "0"], "batch_size = 0; expected a positive integer"),
], ids=["unknown-task", "no-data", "shots-without-pool", "bad-stride", "missing-file", "bad-line", "batch-size"])
@pytest.mark.torch
def test_bad_input_names_what_is_wrong(hf_dir, tmp_path, capsys, args, message):
    files = {"mc": jsonl(tmp_path / "mc.jsonl", MC_ROWS), "text": tmp_path / "t.txt",
             "missing": tmp_path / "none.txt", "bad": tmp_path / "bad.jsonl"}
    files["text"].write_text(TEXT)
    files["bad"].write_text(json.dumps(MC_ROWS[0]) + "\n{\"context\": \"x\", \"choices\": [], \"label\": 0}\n")
    rc = cli.main(["eval", str(hf_dir), *[a.format(**files) for a in args], "--no-progress"])
    assert rc == 2
    assert message in capsys.readouterr().err


@pytest.mark.torch
@pytest.mark.slow
def test_gptjax_lm_eval_is_the_harness_command_line_with_the_model_registered(hf_dir, tmp_path):
    reference("lm_eval")
    import yaml

    data = jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "local_mc.yaml").write_text(yaml.safe_dump({
        "task": "local_mc_cli", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf")},
        "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}", "metric_list": [{"metric": "acc"}]}))
    out = tmp_path / "harness"
    assert cli.main(["lm-eval", "--model", "gptjax", "--model_args", f"path={hf_dir},batch_size=4",
                     "--tasks", "local_mc_cli", "--include_path", str(tasks_dir), "--output_path", str(out)]) == 0
    (written,) = out.rglob("results_*.json")
    acc = json.loads(written.read_text())["results"]["local_mc_cli"]["acc,none"]
    ours = tmp_path / "ours.json"
    assert cli.main(["eval", str(hf_dir), "--task", "mc", "--data", str(data), "--output", str(ours),
                     "--no-progress"]) == 0
    assert acc == pytest.approx(json.loads(ours.read_text())["results"]["mc"]["acc"], abs=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("prefix", ["", "a", "ab"])
def test_bits_per_byte_counts_a_character_split_by_windows_once(hf_dir, tmp_path, prefix):
    # "€" is three byte-level tokens that no merge of this tokenizer joins: at some offset a window
    # boundary falls inside one, and the text's bytes must still be counted as written.
    text = tmp_path / "text.txt"
    text.write_text(prefix + "€" * 150)
    out = tmp_path / "out.json"
    assert cli.main(["eval", str(hf_dir), "--task", "perplexity", "--data", str(text), "--stride", "64",
                     "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["results"]["perplexity"]["bytes"] == len(text.read_bytes())
