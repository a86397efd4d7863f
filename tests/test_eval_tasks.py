"""Benchmark readers, prompts, few-shot and metrics against lm-evaluation-harness 0.4.13.

The expected strings written out below were produced by lm-eval 0.4.13 from the same rows (its
task YAMLs and hellaswag/utils.py); the parity tests at the end rebuild them with lm-eval's own
Task machinery when lm_eval is installed (it is not a gptjax dependency), so a change in lm-eval
shows up there first. Update the hard-coded strings only to follow a deliberate lm-eval change.
"""

import json
import math
import pathlib

import numpy as np
import pytest
from helpers import jsonl, reference

from gptjax.evals import tasks
from gptjax.evals.tasks import ChoiceItem, LastWordItem, Request, TaskError

HELLASWAG_ROWS = [
    {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, "
        "and a woman wearing winter clothes smiles.",
        "ctx_b": "then",
        "ctx": "unused",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift.",
            ", the man puts on a christmas coat.",
            ", the man continues removing the snow on his car.",
        ],
        "source_id": "activitynet~v_-1IBHYS3L-Y",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 5,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to grow tomatoes [title] Pick a  sunny spot.",
        "ctx_b": "choose The spot",
        "ctx": "unused",
        "endings": ["a [step] b", "c  d", "e", "f"],
        "source_id": "wikihow",
        "split": "val",
        "split_type": "indomain",
        "label": 0,
    },
]
MMLU_ROWS = [
    {
        "question": "  What is the smallest bone?\n",
        "subject": "anatomy",
        "choices": ["Stapes", "Femur", "Ulna", "Rib"],
        "answer": 0,
    },
    {
        "question": "Which organ pumps blood?",
        "subject": "anatomy",
        "choices": ["Lung", "Heart", "Liver", "Skin"],
        "answer": 1,
    },
    {"question": "Where is the tibia?", "subject": "anatomy", "choices": ["Arm", "Skull", "Leg", "Hand"], "answer": 2},
]
ARC_ROWS = [
    {
        "id": "a",
        "question": "Which is a gas?",
        "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {
        "id": "b",
        "question": "What do plants need?",
        "choices": {"text": ["light", "salt", "oil", "sand"], "label": ["1", "2", "3", "4"]},
        "answerKey": "1",
    },
]
PIQA_ROWS = [
    {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze the jar.", "label": 0},
    {"goal": "Dry wet shoes", "sol1": "Put them in water.", "sol2": "Stuff them with newspaper.", "label": 1},
]
TRUTHFULQA_ROWS = [
    {
        "question": "What happens if you crack your knuckles?",
        "mc1_targets": {"choices": ["Nothing in particular happens.", "You get arthritis."], "labels": [1, 0]},
        "mc2_targets": {"choices": ["Nothing happens.", "Nothing bad.", "You get arthritis."], "labels": [1, 1, 0]},
    },
    {
        "question": "Is the Earth flat?",
        "mc1_targets": {"choices": ["No.", "Yes.", "Partly."], "labels": [1, 0, 0]},
        "mc2_targets": {"choices": ["No.", "Yes.", "It is round."], "labels": [1, 0, 1]},
    },
]
LAMBADA_ROWS = [{"text": "He handed her the keys and said, drive the car"}, {"text": "She  looked up at the  sky"}]

PRIMER_START = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
)
PRIMER_END = "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain."


# --- readers and prompt formats ----------------------------------------------------------------


def test_hellaswag_preprocess_and_query(tmp_path):
    items = tasks.load_task("hellaswag", jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS))
    assert items[0].context == (
        "Removing ice from car: Then, the man writes over the snow covering the window "
        "of a car, and a woman wearing winter clothes smiles. Then"
    )
    assert items[0].labels == (3,)  # the label arrived as the string "3"
    # " [title]" -> ". ", [header]/[step] dropped, double spaces folded, ctx_b capitalised (rest lower-cased).
    assert items[1].context == "Home and Garden: How to grow tomatoes. Pick a sunny spot. Choose the spot"
    assert items[1].choices == ("a b", "c d", "e", "f")
    assert tasks.requests_for(items[1]) == [Request(items[1].context, " " + c) for c in ("a b", "c d", "e", "f")]


def test_mmlu_prompt_and_description(tmp_path):
    item = tasks.load_task("mmlu", jsonl(tmp_path / "mmlu.jsonl", MMLU_ROWS))[0]
    description = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    query = "What is the smallest bone?\nA. Stapes\nB. Femur\nC. Ulna\nD. Rib\nAnswer:"
    assert (item.context, item.description, item.group, item.labels) == (query, description, "anatomy", (0,))
    assert tasks.requests_for(item) == [Request(description + query, f" {letter}") for letter in "ABCD"]


def test_mmlu_original_csv_takes_subject_from_file_name(tmp_path):
    csv_path = tmp_path / "high_school_physics_test.csv"
    csv_path.write_text('"A ball falls.\nHow fast?",1 m/s,2 m/s,"3, maybe",4 m/s,C\nWhat is g?,9.8,1,0,5,A\n')
    items = tasks.load_task("mmlu", tmp_path)  # a folder reads every CSV in it
    assert [i.labels for i in items] == [(2,), (0,)]
    assert items[0].context == "A ball falls.\nHow fast?\nA. 1 m/s\nB. 2 m/s\nC. 3, maybe\nD. 4 m/s\nAnswer:"
    assert (
        items[0].description
        == "The following are multiple choice questions (with answers) about high school physics.\n\n"
    )
    assert items[0].group == "high_school_physics"


def test_arc_answer_key_letter_or_digit(tmp_path):
    items = tasks.load_task("arc_challenge", jsonl(tmp_path / "arc.jsonl", ARC_ROWS))
    assert items[0] == ChoiceItem("Question: Which is a gas?\nAnswer:", ("ice", "steam", "rock"), (1,))
    assert items[1].labels == (0,)
    assert tasks.requests_for(items[0])[2] == Request("Question: Which is a gas?\nAnswer:", " rock")


def test_piqa_query(tmp_path):
    items = tasks.load_task("piqa", jsonl(tmp_path / "piqa.jsonl", PIQA_ROWS))
    assert items[1] == ChoiceItem(
        "Question: Dry wet shoes\nAnswer:", ("Put them in water.", "Stuff them with newspaper."), (1,)
    )


def test_truthfulqa_primer_and_labels(tmp_path):
    path = jsonl(tmp_path / "tqa.jsonl", TRUTHFULQA_ROWS)
    mc1, mc2 = tasks.load_task("truthfulqa_mc1", path), tasks.load_task("truthfulqa_mc2", path)
    assert tasks.TRUTHFULQA_PRIMER.startswith(PRIMER_START) and tasks.TRUTHFULQA_PRIMER.endswith(PRIMER_END)
    assert tasks.TRUTHFULQA_PRIMER.count("\n\nQ: ") == 5
    assert mc1[1].context == tasks.TRUTHFULQA_PRIMER + "\n\nQ: Is the Earth flat?\nA:"
    assert [i.labels for i in mc1] == [(0,), (0,)]
    assert [i.labels for i in mc2] == [(0, 1), (0, 2)]
    assert mc2[1].choices == ("No.", "Yes.", "It is round.")


def test_lambada_splits_on_single_spaces(tmp_path):
    items = tasks.load_task("lambada_openai", jsonl(tmp_path / "lambada.jsonl", LAMBADA_ROWS))
    assert items[0] == LastWordItem("He handed her the keys and said, drive the", " car")
    # Single-space splitting keeps double spaces, even one left at the end of the context.
    assert items[1] == LastWordItem("She  looked up at the ", " sky")
    assert tasks.requests_for(items[0]) == [Request("He handed her the keys and said, drive the", " car")]


def test_generic_mc_and_limit(tmp_path):
    rows = [
        {"context": "2+2=", "choices": ["3", "4"], "label": 1},
        {"context": "Even:", "choices": ["2", "3", "4"], "label": [2, 0]},
        {"context": "x", "choices": ["y"], "label": 0},
    ]
    items = tasks.load_task("mc", jsonl(tmp_path / "mc.jsonl", rows), limit=2)
    assert [i.labels for i in items] == [(1,), (0, 2)]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, line, expected",
    [
        ("mc", "{not json", r"mc\.jsonl:2: not valid JSON .*expected one JSON object per line"),
        (
            "mc",
            '{"context": "q", "choices": ["a"]}',
            r"mc\.jsonl:2: missing field 'label'.*a row looks like \{\"context\"",
        ),
        (
            "mc",
            '{"context": "q", "choices": ["a", "b"], "label": 2}',
            r"mc\.jsonl:2: label 2 is out of range for 2 choices; expected 0\.\.1",
        ),
        ("mc", '{"context": "q", "choices": [], "label": 0}', r"mc\.jsonl:2: choices \(\) are empty"),
        (
            "mc",
            '{"context": "q", "choices": ["a", ""], "label": 0}',
            r"mc\.jsonl:2: choice 1 is ''; expected a non-empty string",
        ),
        (
            "mc",
            '{"context": "q", "choices": "ab", "label": 0}',
            r"mc\.jsonl:2: field 'choices' is str 'ab'; expected a list",
        ),
        (
            "hellaswag",
            json.dumps({**HELLASWAG_ROWS[0], "label": ""}),
            r"hellaswag\.jsonl:2: field 'label' is str ''.*unlabelled test split",
        ),
        (
            "arc_easy",
            json.dumps({**ARC_ROWS[0], "answerKey": "E"}),
            r"arc_easy\.jsonl:2: answerKey 'E' is not one of the choice labels \['A', 'B', 'C'\]",
        ),
        ("mmlu", json.dumps({**MMLU_ROWS[0], "choices": ["a", "b", "c"]}), r"mmlu\.jsonl:2: 3 choices .*exactly 4"),
        (
            "truthfulqa_mc1",
            json.dumps({**TRUTHFULQA_ROWS[0], "mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]}}),
            r"truthfulqa_mc1\.jsonl:2: mc1_targets marks 2 choices true; expected exactly one",
        ),
        ("lambada_openai", '{"text": "oneword"}', r"lambada_openai\.jsonl:2: text ends .*last word"),
    ],
)
def test_malformed_line_names_file_line_and_expectation(tmp_path, name, line, expected):
    good = {
        "mc": '{"context": "q", "choices": ["a", "b"], "label": 0}',
        "hellaswag": json.dumps(HELLASWAG_ROWS[1]),
        "arc_easy": json.dumps(ARC_ROWS[1]),
        "mmlu": json.dumps(MMLU_ROWS[1]),
        "truthfulqa_mc1": json.dumps(TRUTHFULQA_ROWS[1]),
        "lambada_openai": json.dumps(LAMBADA_ROWS[0]),
    }[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(good + "\n" + line + "\n")
    tasks.load_task(name, jsonl(tmp_path / "ok.jsonl", [json.loads(good)]))  # the good line alone reads
    with pytest.raises(TaskError, match=expected):
        tasks.load_task(name, path)


def test_csv_error_names_line_and_file_name_rule(tmp_path):
    bad = tmp_path / "anatomy_test.csv"
    bad.write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,E\n")
    with pytest.raises(TaskError, match=r"anatomy_test\.csv:2: answer 'E' is not one of \('A', 'B', 'C', 'D'\)"):
        tasks.read_mmlu(bad)
    with pytest.raises(TaskError, match=r"expected \{subject\}_test\.csv.*got 'anatomy\.csv'"):
        tasks.read_mmlu(bad.rename(tmp_path / "anatomy.csv"))


def test_unknown_task_lists_known_and_nearest(tmp_path):
    with pytest.raises(
        TaskError, match=r"unknown task 'helaswag' \(did you mean 'hellaswag'\?\); known tasks: mc, hellaswag, mmlu, "
    ):
        tasks.load_task("helaswag", tmp_path / "x.jsonl")
    with pytest.raises(TaskError, match=r"no such file"):
        tasks.load_task("piqa", tmp_path / "missing.jsonl")
    with pytest.raises(TaskError, match=r"limit = 0; expected a positive integer"):
        tasks.load_task("piqa", jsonl(tmp_path / "p.jsonl", PIQA_ROWS), limit=0)


def test_items_check_themselves():
    with pytest.raises(TaskError, match=r"label -1 is out of range for 2 choices"):
        ChoiceItem("q", ("a", "b"), (-1,))
    with pytest.raises(TaskError, match=r"ascending without repeats"):
        ChoiceItem("q", ("a", "b"), (1, 0))
    with pytest.raises(TaskError, match=r"labels \(\) are empty"):
        ChoiceItem("q", ("a", "b"), ())


# --- few-shot -----------------------------------------------------------------------------------


def _numbered(n: int) -> list[ChoiceItem]:
    return [ChoiceItem(f"Q{i}:", (f"a{i}", f"b{i}"), (i % 2,)) for i in range(n)]


def test_fewshot_layout_matches_lm_eval():
    item, demo = ChoiceItem("Q:", ("yes", "no"), (1,), description="Desc.\n\n"), ChoiceItem("D:", ("x", "y"), (0,))
    [prompt] = tasks.build_fewshot([item], [demo, item], 1, seed=0)
    assert prompt.context == "Desc.\n\nD: x\n\nQ:" and prompt.description == ""
    assert tasks.requests_for(prompt)[0] == Request("Desc.\n\nD: x\n\nQ:", " yes")
    [zero] = tasks.build_fewshot([item], [], 0, seed=0)
    assert zero.context == "Desc.\n\nQ:" and tasks.requests_for(zero) == tasks.requests_for(item)
    [lam] = tasks.build_fewshot([LastWordItem("ctx", " w")], [LastWordItem("demo", " d")], 1, seed=0, separator="\n")
    assert lam.context == "demo  d\nctx"  # lm-eval's target delimiter plus the target's own space


def test_fewshot_is_deterministic_and_never_shows_the_item():
    items = _numbered(12)
    first = tasks.build_fewshot(items, items, 3, seed=7)
    assert first == tasks.build_fewshot(items, items, 3, seed=7)
    assert first != tasks.build_fewshot(items, items, 3, seed=8)
    for item, prompt in zip(items, first):
        shots = prompt.context.split("\n\n")
        assert len(shots) == 4 and shots[-1] == item.context and len(set(shots)) == 4
        assert item.context + " " not in prompt.context  # the item is never its own demonstration
    # Each item gets its own draw, as lm-eval draws afresh for each doc, not one shared set.
    assert len({prompt.context.split("\n\n")[0] for prompt in first}) >= 6
    # A prompt depends on its item's position only, not on which other items are evaluated.
    assert tasks.build_fewshot(items[:5], items, 3, seed=7) == first[:5]


def test_fewshot_first_n_stays_in_group():
    pool = [ChoiceItem(f"{g}{i}", ("a", "b"), (0,), group=g) for g in "xy" for i in range(3)]
    item = ChoiceItem("ask", ("a", "b"), (1,), description="D ", group="y")
    [prompt] = tasks.build_fewshot([item], pool, 2, seed=0, sampler="first_n")
    assert prompt.context == "D y0 a\n\ny1 a\n\nask"
    with pytest.raises(TaskError, match=r"needs 4 demonstrations but the pool has 3 other items of group 'y'"):
        tasks.build_fewshot([item], pool, 4, seed=0)
    with pytest.raises(TaskError, match=r"k = -1; expected"):
        tasks.build_fewshot([item], pool, -1, seed=0)


# --- metrics ------------------------------------------------------------------------------------


def _res(*lls):
    return [(ll, False) for ll in lls]


def test_acc_and_acc_norm_disagree_on_length():
    # "bbbbbbbb" loses on the sum (-4 < -3) but wins per character (-0.5 > -3).
    long = ChoiceItem("q", ("a", "bbbbbbbb"), (1,))
    one = tasks.score_choice([long], [_res(-3.0, -4.0)])
    assert (one["acc"], one["acc_norm"], one["acc_bytes"]) == (0.0, 1.0, 1.0)
    # "é" is one character but two UTF-8 bytes: per character -1.5 < -1.0, per byte -0.75 > -1.0.
    accent = ChoiceItem("q", ("é", "ee"), (0,))
    two = tasks.score_choice([accent], [_res(-1.5, -2.0)])
    assert (two["acc"], two["acc_norm"], two["acc_bytes"]) == (1.0, 0.0, 1.0)
    assert one["acc_stderr"] is None  # lm-eval reports N/A for one document
    both = tasks.score_choice([long, accent], [_res(-3.0, -4.0), _res(-1.5, -2.0)])
    assert (both["acc"], both["acc_norm"], both["acc_bytes"]) == (0.5, 0.5, 1.0)
    # Sample std of {0, 1} is 1/sqrt(2), over sqrt(2) documents.
    assert both["acc_stderr"] == pytest.approx(0.5) and both["acc_bytes_stderr"] == 0.0


def test_acc_counts_any_label_and_first_of_ties():
    items = [ChoiceItem("q", ("x", "y", "z"), (0, 2)), ChoiceItem("q", ("x", "y"), (1,))]
    m = tasks.score_choice(items, [_res(-3.0, -2.0, -1.0), _res(-1.0, -1.0)])
    assert m["acc"] == 0.5 and m["acc_stderr"] == pytest.approx(0.5)


def test_mc2_probability_mass():
    items = [ChoiceItem("q", ("t", "t2", "f"), (0, 1)), ChoiceItem("q", ("t", "f"), (0,))]
    lls = [[math.log(0.2), math.log(0.1), math.log(0.1)], [-1000.0, -1001.0]]  # the second underflows exp
    m = tasks.score_mc2(items, [_res(*row) for row in lls])
    mass = [0.75, 1 / (1 + math.exp(-1))]
    assert m["acc"] == pytest.approx(sum(mass) / 2, rel=1e-12)
    assert m["acc_stderr"] == pytest.approx(abs(mass[0] - mass[1]) / 2, rel=1e-9)


def test_lambada_accuracy_and_perplexity():
    items = [LastWordItem("a", " b"), LastWordItem("c", " d"), LastWordItem("e", " f")]
    m = tasks.score_lambada(items, [[(-1.0, True)], [(-2.0, False)], [(-6.0, True)]])
    # Perplexity over items of the summed target log-prob (not per token): exp(9 / 3).
    assert m["perplexity"] == pytest.approx(math.exp(3.0), rel=1e-12)
    assert m["acc"] == pytest.approx(2 / 3) and m["acc_stderr"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert "perplexity_stderr" not in m


def test_score_task_reports_what_lm_eval_reports():
    items = [ChoiceItem("q", ("a", "bb"), (1,))]
    assert tasks.score_task("mmlu", items, [_res(-1.0, -1.5)]) == {"acc": 0.0, "acc_stderr": None}
    hs = tasks.score_task("hellaswag", items, [_res(-1.0, -1.5)])
    assert hs == {"acc": 0.0, "acc_stderr": None, "acc_norm": 1.0, "acc_norm_stderr": None}


def test_result_shape_errors():
    items = [ChoiceItem("q", ("a", "b"), (0,))]
    with pytest.raises(TaskError, match=r"item 0 has 1 results for 2 requests"):
        tasks.score_choice(items, [_res(-1.0)])
    with pytest.raises(TaskError, match=r"0 result lists for 1 items"):
        tasks.score_choice(items, [])
    with pytest.raises(TaskError, match=r"NaN"):
        tasks.score_choice(items, [_res(float("nan"), -1.0)])
    flat = [(-1.0, False), (-2.0, True), (-3.0, True)]
    both = items + [LastWordItem("c", " d")]
    assert tasks.results_per_item(both, flat) == [flat[:2], flat[2:]]
    with pytest.raises(TaskError, match=r"2 results for 3 requests"):
        tasks.results_per_item(both, flat[:2])


# --- parity with lm-eval itself (skipped without lm_eval) -------------------------------------------


@pytest.fixture
def lm_eval_task(tmp_path):
    """Build lm-eval's own ConfigurableTask for a task YAML, reading our local files instead of the Hub."""
    lm_eval = reference("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    def build(yaml_name: str, splits: dict[str, pathlib.Path], **overrides):
        config = load_yaml(pathlib.Path(lm_eval.__file__).parent / "tasks" / yaml_name)
        files = {split: str(path) for split, path in splits.items()}
        config.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": files, "cache_dir": str(tmp_path / "hf")},
            **overrides,
        )
        task = ConfigurableTask(config=config)
        task.set_fewshot_seed(1234)
        return task

    return build


def _their_requests(task, doc, k: int) -> list[Request]:
    context = task.fewshot_context(doc, k)
    instances = task.construct_requests(doc, context, metadata=("parity", 0, 1))
    instances = instances if isinstance(instances, list) else [instances]
    return [Request(*instance.arguments) for instance in instances]


PARITY = [  # (yaml, our task, rows, eval split)
    ("hellaswag/hellaswag.yaml", "hellaswag", HELLASWAG_ROWS, "validation"),
    ("mmlu/default/mmlu_anatomy.yaml", "mmlu", MMLU_ROWS, "test"),
    ("arc/arc_easy.yaml", "arc_easy", ARC_ROWS, "validation"),
    ("piqa/piqa.yaml", "piqa", PIQA_ROWS, "validation"),
    ("truthfulqa/truthfulqa_mc1.yaml", "truthfulqa_mc1", TRUTHFULQA_ROWS, "validation"),
    ("truthfulqa/truthfulqa_mc2.yaml", "truthfulqa_mc2", TRUTHFULQA_ROWS, "validation"),
    ("lambada/lambada_openai.yaml", "lambada_openai", LAMBADA_ROWS, "test"),
]


@pytest.mark.parametrize("yaml_name, name, rows, split", PARITY, ids=[p[1] for p in PARITY])
def test_zero_shot_requests_and_metrics_match_lm_eval(tmp_path, lm_eval_task, yaml_name, name, rows, split):
    path = jsonl(tmp_path / f"{name}.jsonl", rows)
    # lm-eval reads every split its YAML names, evaluated or not.
    task = lm_eval_task(yaml_name, {s: path for s in ("train", "validation", "test", "dev")})
    docs = list(task.test_docs() if split == "test" else task.validation_docs())
    items = tasks.build_fewshot(tasks.load_task(name, path), [], 0, seed=0)
    assert [_their_requests(task, doc, 0) for doc in docs] == [tasks.requests_for(i) for i in items]
    # Log-likelihoods where sum, per-character and per-byte winners differ, greedy flags mixed.
    rng = np.random.default_rng(0)
    results = [[(float(-rng.uniform(0.5, 30)), bool(j % 2)) for j in range(len(tasks.requests_for(i)))] for i in items]
    theirs = [task.process_results(doc, res) for doc, res in zip(docs, results)]
    ours = tasks.score_task(name, items, results)
    aggregate = task.aggregation()
    for metric in tasks.task_spec(name).metrics:
        assert ours[metric] == aggregate[metric]([t[metric] for t in theirs]), metric


@pytest.mark.parametrize(
    "yaml_name, name, rows, split", [PARITY[0], PARITY[2], PARITY[6]], ids=["hellaswag", "arc", "lambada"]
)
def test_one_shot_layout_matches_lm_eval(tmp_path, lm_eval_task, yaml_name, name, rows, split):
    # The training split holds the evaluated row plus one other. Where lm-eval removes the
    # evaluated doc (HellaSwag) and where it is left out of the pool (ARC, LAMBADA: the pool is
    # the training split, the evaluated doc only ours), one demonstration is possible, so lm-eval's
    # seeded draw and ours must pick the same one.
    evaluated = jsonl(tmp_path / "eval.jsonl", rows[1:])
    train = jsonl(tmp_path / "train.jsonl", rows if name == "hellaswag" else rows[:1])
    # LAMBADA has no training split: lm-eval would draw from the test split, the item itself included.
    overrides = {"training_split": "train"} if name == "lambada_openai" else {}
    task = lm_eval_task(yaml_name, {split: evaluated, "test": evaluated, "train": train}, **overrides)
    docs = list(task.test_docs() if split == "test" else task.validation_docs())
    pool = tasks.load_task(name, jsonl(tmp_path / "pool.jsonl", rows))
    items = tasks.build_fewshot(tasks.load_task(name, evaluated), pool, 1, seed=0)
    assert [_their_requests(task, doc, 1) for doc in docs] == [tasks.requests_for(i) for i in items]


def test_mmlu_five_shot_first_n_matches_lm_eval(tmp_path, lm_eval_task):
    dev = [{**MMLU_ROWS[i % 3], "question": f"Dev question {i}?"} for i in range(5)]
    test, dev_path = jsonl(tmp_path / "test.jsonl", MMLU_ROWS), jsonl(tmp_path / "dev.jsonl", dev)
    task = lm_eval_task("mmlu/default/mmlu_anatomy.yaml", {"test": test, "dev": dev_path})
    items = tasks.build_fewshot(
        tasks.load_task("mmlu", test),
        tasks.load_task("mmlu", dev_path),
        5,
        seed=0,
        sampler=tasks.task_spec("mmlu").sampler,
    )
    assert [_their_requests(task, doc, 5) for doc in task.test_docs()] == [tasks.requests_for(i) for i in items]


def test_truthfulqa_primer_is_lm_evals(lm_eval_task):
    lm_eval = reference("lm_eval")
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    config = load_yaml(pathlib.Path(lm_eval.__file__).parent / "tasks" / "truthfulqa" / "truthfulqa_mc1.yaml")
    assert apply_template(config["doc_to_text"], {"question": "X"}) == tasks.TRUTHFULQA_PRIMER + "\n\nQ: X\nA:"
