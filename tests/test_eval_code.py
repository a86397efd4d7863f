"""HumanEval-style checking: problem files, the sandbox's verdicts, limits and layers, pass@k, evaluate_code.

Each isolation layer is tested alone (the others switched off), and a control run with every layer
off shows that the same program does the damage, so a layer test cannot pass by accident.
"""

import json
import math
import os
import pathlib
import socket
import time
from fractions import Fraction

import numpy as np
import pytest

from gptjax.evals import code, sandbox
from gptjax.evals.code import CodeProblem
from gptjax.evals.sandbox import CodeEvalError, Sandbox

ADD = CodeProblem(
    task_id="toy/add",
    prompt='def add(a, b):\n    """Return a plus b."""\n',
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
    canonical_solution="    return a + b\n",
)
REVERSE = CodeProblem(
    task_id="toy/reverse",
    prompt='def reverse(s):\n    """Return s backwards."""\n',
    test="def check(candidate):\n    assert candidate('abc') == 'cba'\n    assert candidate('') == ''\n",
    entry_point="reverse",
    canonical_solution="    return s[::-1]\n",
)
FIZZBUZZ = CodeProblem(
    task_id="toy/fizzbuzz",
    prompt='def fizzbuzz(n):\n    """FizzBuzz words for 1..n."""\n',
    test=("def check(candidate):\n    assert candidate(5) == ['1', '2', 'Fizz', '4', 'Buzz']\n"
          "    assert candidate(15)[-1] == 'FizzBuzz'\n"),
    entry_point="fizzbuzz",
    canonical_solution=("    words = []\n    for i in range(1, n + 1):\n"
                        "        words.append('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else "
                        "'Buzz' if i % 5 == 0 else str(i))\n    return words\n"),
)
PROBLEMS = (ADD, REVERSE, FIZZBUZZ)
WRONG = {"toy/add": "    return a - b\n", "toy/reverse": "    return s\n",
         "toy/fizzbuzz": "    return [str(i) for i in range(1, n + 1)]\n"}

ALL_OFF = Sandbox(namespaces=False, landlock=False, guard=False, max_processes=4096)
GUARD_ONLY = Sandbox(namespaces=False, landlock=False)
NETNS_ONLY = Sandbox(landlock=False, guard=False)
LANDLOCK_ONLY = Sandbox(namespaces=False, guard=False, max_processes=4096)


def needs(layer: str) -> None:
    if layer not in sandbox.isolation_layers():
        pytest.skip(f"this kernel does not give the {layer!r} layer (have {sandbox.isolation_layers()})")


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def as_record(problem: CodeProblem) -> dict:
    return {"task_id": problem.task_id, "prompt": problem.prompt, "test": problem.test,
            "entry_point": problem.entry_point, "canonical_solution": problem.canonical_solution}


# ----------------------------------------------------------------------------- read_problems


def test_read_problems_round_trip_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "toy.jsonl", [as_record(ADD), "", as_record(REVERSE), as_record(FIZZBUZZ)])
    assert code.read_problems(path) == list(PROBLEMS)


@pytest.mark.parametrize("bad_line, expected", [
    ('{"task_id": "x", "prompt": ', "not valid JSON"),
    ('["a", "list"]', "got a JSON list"),
    (json.dumps({"task_id": "x", "prompt": "", "test": ""}), "missing field(s) entry_point"),
    (json.dumps({"task_id": "x", "prompt": 3, "test": "", "entry_point": "f"}), "field prompt is a int"),
    (json.dumps({"task_id": "x", "prompt": "", "test": "", "entry_point": "f()"}), "not a Python identifier"),
])
def test_read_problems_names_file_and_line_of_a_bad_record(tmp_path, bad_line, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [as_record(ADD), "", bad_line])
    with pytest.raises(CodeEvalError) as info:
        code.read_problems(path)
    assert f"{path}:3: " in str(info.value) and expected in str(info.value)


def test_read_problems_refuses_duplicate_task_ids_and_empty_files(tmp_path):
    with pytest.raises(CodeEvalError, match="'toy/add' already appeared on line 1"):
        code.read_problems(write_jsonl(tmp_path / "dup.jsonl", [as_record(ADD), as_record(ADD)]))
    with pytest.raises(CodeEvalError, match="no problems"):
        code.read_problems(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_truncate_completion_cuts_at_the_earliest_stop():
    body = "    return a + b\n"
    assert code.truncate_completion(body + "\n\nprint(add(1, 2))\ndef g():\n") == body + "\n"
    assert code.truncate_completion(body + "\n# done\nif x:\n") == body
    assert code.truncate_completion(body) == body
    assert set(code.STOP_SEQUENCES) == {"\ndef", "\nclass", "\nif", "\nprint", "\n#"}
    with pytest.raises(CodeEvalError, match="empty string"):
        code.truncate_completion(body, ("\ndef", ""))


# ----------------------------------------------------------------------------- verdicts


def test_check_many_keeps_input_order_and_canonical_solutions_pass():
    pairs = [(ADD, ADD.canonical_solution), (ADD, WRONG["toy/add"]), (REVERSE, REVERSE.canonical_solution),
             (FIZZBUZZ, WRONG["toy/fizzbuzz"]), (FIZZBUZZ, FIZZBUZZ.canonical_solution)]
    results = code.check_many(pairs, workers=2)
    assert [r.status for r in results] == ["passed", "failed", "passed", "failed", "passed"]
    assert [r.passed for r in results] == [True, False, True, False, True]


def test_wrong_answer_fails_naming_the_assertion():
    result = code.check_program(ADD, WRONG["toy/add"])
    assert (result.passed, result.status) == (False, "failed")
    assert "assert candidate(2, 3) == 5" in result.detail and "program.py:" in result.detail


@pytest.mark.parametrize("completion, expected", [
    ("    return undefined_name\n", "NameError"),
    ("    return (a +\n", "SyntaxError"),
    ("    import sys\n    sys.exit(0)\n", "SystemExit"),  # exiting early is not passing
    ("    import os\n    os._exit(0)\n", "exited with status 0 before the test finished"),
])
def test_crashes_and_early_exits_are_errors_with_detail(completion, expected):
    result = code.check_program(ADD, completion)
    assert (result.passed, result.status) == (False, "error") and expected in result.detail


def test_program_cannot_forge_a_passing_verdict():
    # The report pipe's number is in the child's argv; only the line carrying the child's secret token counts.
    program = "import os, sys\nos.write(int(sys.argv[2]), b'f' * 32 + b' passed \\n')\nraise ValueError('wrong')\n"
    result = sandbox.run_program(program)
    assert result.status == "error" and "ValueError" in result.detail


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    start = time.monotonic()
    result = code.check_program(ADD, "    while True:\n        pass\n", timeout_s=1.0, cpu_s=30)
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and "wall-clock" in result.detail
    assert 1.0 <= elapsed < 4.0


def test_cpu_limit_kills_a_busy_program_before_the_wall_clock():
    start = time.monotonic()
    result = code.check_program(ADD, "    while True:\n        pass\n", timeout_s=20.0, cpu_s=1)
    assert result.status == "timeout" and "SIGXCPU" in result.detail
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("completion", [
    "    x = bytearray(8 << 30)\n",
    "    xs = []\n    while True:\n        xs.append(bytearray(1 << 20))\n",
])
def test_memory_bomb_hits_the_address_space_limit(completion):
    start = time.monotonic()
    result = code.check_program(ADD, completion, memory_mb=256, timeout_s=20.0)
    assert result.status == "memory" and "256 MiB" in result.detail
    assert time.monotonic() - start < 5.0


def test_file_size_limit_makes_a_large_write_an_error():
    result = sandbox.run_program("open('big', 'wb').write(b'x' * (3 << 20))\n", Sandbox(file_mb=1))
    assert result.status == "error" and "File too large" in result.detail


def test_output_is_captured_and_truncated():
    result = sandbox.run_program("print('y' * 100_000)\n", Sandbox(output_chars=50))
    assert result.status == "passed"
    assert result.output == "y" * 50 + "\n[output truncated]"


def test_program_sees_no_inherited_environment_and_an_empty_directory_removed_afterwards(monkeypatch):
    monkeypatch.setenv("GPTJAX_TEST_SECRET", "hunter2")
    program = ("import os\nassert 'GPTJAX_TEST_SECRET' not in os.environ, os.environ\n"
               "assert os.listdir('.') == [], os.listdir('.')\nprint(os.getcwd())\n")
    result = sandbox.run_program(program)
    assert result.status == "passed", result.output
    workdir = result.output.strip()
    assert workdir.endswith("/work") and not os.path.exists(os.path.dirname(workdir))


def test_a_child_that_cannot_start_is_an_error_not_a_failed_sample(monkeypatch):
    monkeypatch.setattr(sandbox.sys, "executable", "/bin/false")  # a Python that exits at once, reporting nothing
    with pytest.raises(CodeEvalError, match="did not start: exit status 1"):
        sandbox.run_program("pass\n")


def test_sandbox_arguments_are_checked():
    with pytest.raises(CodeEvalError, match=r"timeout_s=0 is not accepted: expected a positive"):
        Sandbox(timeout_s=0)
    with pytest.raises(CodeEvalError, match=r"max_processes=0"):
        Sandbox(max_processes=0)


# ----------------------------------------------------------------------------- isolation layers


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connections(server) -> int:
    """Connections that completed a handshake: they wait in the backlog even after the client is gone."""
    count = 0
    while True:
        try:
            server.accept()[0].close()
            count += 1
        except BlockingIOError:
            return count


def connect_program(port: int) -> str:
    return f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"


@pytest.mark.parametrize("layer, box", [
    (None, Sandbox()), ("guard", GUARD_ONLY), ("netns", NETNS_ONLY), ("landlock-tcp", LANDLOCK_ONLY)])
def test_network_is_blocked_by_each_layer_alone(listener, layer, box):
    if layer is not None:
        needs(layer)
    port = listener.getsockname()[1]
    control = sandbox.run_program(connect_program(port), ALL_OFF)
    assert control.status == "passed" and connections(listener) == 1, "the test cannot see a connection"
    result = sandbox.run_program(connect_program(port), box)
    assert result.status == "error" and connections(listener) == 0, result.detail


def destroy_program(marker, victim) -> str:
    return (f"import os, shutil\n"
            f"try:\n    os.system('touch {marker}')\nexcept Exception as e:\n    print(e)\n"
            f"try:\n    shutil.rmtree({str(victim)!r})\nexcept Exception as e:\n    print(e)\n")


@pytest.mark.parametrize("layer, box", [(None, Sandbox()), ("guard", GUARD_ONLY), ("landlock-fs", LANDLOCK_ONLY)])
def test_system_and_rmtree_outside_the_workdir_do_not_succeed(tmp_path, layer, box):
    if layer is not None:
        needs(layer)
    marker, victim = tmp_path / "touched", tmp_path / "victim"

    def run(box):
        victim.mkdir(exist_ok=True)
        (victim / "keep.txt").write_text("keep")
        return sandbox.run_program(destroy_program(marker, victim), box)

    assert run(ALL_OFF).status == "passed" and marker.exists() and not victim.exists(), "control did no damage"
    marker.unlink()
    result = run(box)
    assert not marker.exists() and (victim / "keep.txt").read_text() == "keep", result.output
    if box.guard:  # refused by the guard itself, not by what shutil calls underneath
        assert "os.system is disabled" in result.output and "shutil.rmtree is disabled" in result.output


def test_landlock_confines_plain_writes_to_the_workdir(tmp_path):
    needs("landlock-fs")
    victim = tmp_path / "victim.txt"
    program = (f"open('inside.txt', 'w').write('ok')\nopen({str(victim)!r}, 'w').write('overwritten')\n")
    victim.write_text("original")
    assert sandbox.run_program(program, ALL_OFF).status == "passed" and victim.read_text() == "overwritten"
    victim.write_text("original")
    result = sandbox.run_program(program, LANDLOCK_ONLY)
    assert result.status == "error" and "PermissionError" in result.detail
    assert "program.py:2" in result.detail and victim.read_text() == "original"


@pytest.mark.parametrize("probe", [
    "print(open({secret!r}).read())",  # a file outside the work directory
    "import os\nprint(os.listdir({home!r}))",  # the home directory
    "import subprocess\nsubprocess.run(['cat', {secret!r}])",  # a program outside the interpreter's files
])
def test_landlock_confines_reads_to_the_interpreter_and_the_workdir(tmp_path, probe):
    needs("landlock-read")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-1234")
    program = probe.format(secret=str(secret), home=str(pathlib.Path.home()))
    control = sandbox.run_program(program, Sandbox(landlock=False, guard=False, max_processes=64))
    assert control.status == "passed", control.detail  # the probe works where reads are open
    result = sandbox.run_program(program, LANDLOCK_ONLY)
    assert result.status == "error" and "PermissionError" in result.detail, result.detail
    assert "TOKEN-1234" not in result.output
    # The interpreter's own files and the work directory stay readable.
    ok = sandbox.run_program("import json, decimal, statistics\nopen('w.txt', 'w').write('x')\n"
                             "assert open('w.txt').read() == 'x'\n", LANDLOCK_ONLY)
    assert ok.status == "passed", ok.detail


def test_guard_refuses_spawning_processes():
    result = sandbox.run_program("import subprocess\nsubprocess.run(['true'])\n", Sandbox())
    assert result.status == "error" and "subprocess.Popen is disabled" in result.detail


def test_process_limit_refuses_fork_without_the_guard():
    if os.getuid() == 0:
        pytest.skip("the kernel exempts uid 0 from RLIMIT_NPROC, even inside a user namespace")
    result = sandbox.run_program("import os\nos.fork()\n", Sandbox(guard=False))
    assert result.status == "error" and "BlockingIOError" in result.detail


def process_gone(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":  # killed, waiting for its new parent to reap it
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("tail, status", [("while True:\n    pass\n", "timeout"), ("", "passed")])
def test_background_process_does_not_outlive_the_program(tail, status):
    # Without the guard (and Landlock, which refuses executing /usr/bin/sleep) the program can
    # spawn; the process-group kill must still take the child.
    program = "import subprocess\np = subprocess.Popen(['sleep', '60'])\nprint('child', p.pid, flush=True)\n" + tail
    result = sandbox.run_program(program, Sandbox(timeout_s=1.5, guard=False, landlock=False, max_processes=64))
    assert result.status == status and result.output.startswith("child "), result.output
    assert process_gone(int(result.output.split()[1]))


def test_layers_are_reported():
    layers = sandbox.isolation_layers()
    assert layers[-1] == "guard" and sandbox.run_program("pass\n", GUARD_ONLY).layers == ("guard",)
    assert sandbox.network_isolation().endswith("guard")
    assert sandbox.run_program("pass\n", ALL_OFF).layers == ()


# ----------------------------------------------------------------------------- pass@k


def closed_form(n, c, k) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def paper_numpy(n, c, k) -> float:
    """Chen et al. (2021), figure 3, verbatim."""
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (5, 0, 3), (5, 5, 3), (10, 3, 1), (10, 3, 5),
                                     (10, 8, 5), (10, 6, 5), (200, 13, 100), (200, 0, 100), (200, 1, 1)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    assert code.pass_at_k(n, c, k) == closed_form(n, c, k)
    assert code.pass_at_k(n, c, k) == pytest.approx(paper_numpy(n, c, k), rel=1e-12, abs=1e-15)


def test_pass_at_k_edge_values_and_errors():
    assert code.pass_at_k(7, 0, 3) == 0.0 and code.pass_at_k(7, 7, 3) == 1.0 and code.pass_at_k(7, 5, 3) == 1.0
    assert code.pass_at_k(4, 2, 1) == 0.5
    with pytest.raises(CodeEvalError, match="k=5 is not accepted: expected between 1 and n=4"):
        code.pass_at_k(4, 2, 5)
    with pytest.raises(CodeEvalError, match="c=5"):
        code.pass_at_k(4, 5, 1)
    with pytest.raises(CodeEvalError, match="k=True"):
        code.pass_at_k(4, 1, True)


def test_pass_at_k_table_averages_tasks_and_omits_ks_beyond_the_fewest_samples():
    results = {"a": [True, False, False], "b": [True, True, False, False, False]}
    table = code.pass_at_k_table(results, ks=(1, 2, 5))
    assert set(table) == {"pass@1", "pass@2"}
    assert table["pass@1"] == pytest.approx((1 / 3 + 2 / 5) / 2, rel=1e-15)
    assert table["pass@2"] == pytest.approx((closed_form(3, 1, 2) + closed_form(5, 2, 2)) / 2, rel=1e-15)
    with pytest.raises(CodeEvalError, match="at least one sample per task"):
        code.pass_at_k_table({"a": [True], "b": []})


# ----------------------------------------------------------------------------- evaluate_code


class FakeModel:
    """Four samples a prompt: two right, one wrong, one raising."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, n):
        self.calls.append((prompts, n))
        problem = next(p for p in PROBLEMS if p.prompt == prompts[0])
        right, wrong = problem.canonical_solution, WRONG[problem.task_id]
        return [[right, wrong, "    raise ValueError('no')\n", right][:n]]


def test_evaluate_code_refuses_before_generating_unless_allowed():
    model = FakeModel()
    with pytest.raises(CodeEvalError, match="--allow-code-execution"):
        code.evaluate_code(PROBLEMS, model, n_samples=4, allow_code_execution=False)
    assert model.calls == []


def test_evaluate_code_scores_pass_at_k(capsys):
    model = FakeModel()
    out = code.evaluate_code(PROBLEMS, model, n_samples=4, ks=(1, 2), allow_code_execution=True, progress=True)
    assert out["pass@1"] == 0.5
    assert out["pass@2"] == 1 - math.comb(2, 2) / math.comb(4, 2)
    assert (out["n_samples"], out["problems"]) == (4, 3)
    assert out["per_task"] == {p.task_id: ["passed", "failed", "error", "passed"] for p in PROBLEMS}
    assert out["isolation"].endswith("guard")
    confined = "landlock-read" in sandbox.isolation_layers()
    assert out["reads"].startswith("confined" if confined else "not confined"), out["reads"]
    assert model.calls == [([p.prompt], 4) for p in PROBLEMS]
    assert "generating" in capsys.readouterr().err


def test_evaluate_code_checks_arguments_before_generating():
    model = FakeModel()
    with pytest.raises(CodeEvalError, match=r"ks=\(1, 10\).*n_samples=4"):
        code.evaluate_code(PROBLEMS, model, n_samples=4, ks=(1, 10), allow_code_execution=True)
    with pytest.raises(CodeEvalError, match="unique task_ids"):
        code.evaluate_code([ADD, ADD], model, n_samples=1, allow_code_execution=True)
    assert model.calls == []
    with pytest.raises(CodeEvalError, match="expected a list holding one list of 5 strings"):
        code.evaluate_code(PROBLEMS, model, n_samples=5, allow_code_execution=True, progress=False)
