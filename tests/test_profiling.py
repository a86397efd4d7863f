"""Profiling a run (profile.start_step, profile.steps, `gptjax train --profile`): a trace of the chosen
steps in the run directory, a summary of where their time went, and nothing else changed."""

import gzip
import json

import pytest
import yaml
from helpers import TINY_RUN, losses

from gptjax import cli
from gptjax.config import ConfigError, ProfileConfig
from gptjax.training import profiling

TINY = {**TINY_RUN, "steps": 5, "eval_every": 5, "checkpoint_every": 5, "sample_tokens": 0}


@pytest.mark.slow
def test_train_profile_traces_the_steps_after_the_first_and_changes_nothing(tmp_path, config_file, capsys):
    plain, traced = tmp_path / "plain", tmp_path / "traced"
    assert cli.main(["train", str(config_file), "--run-dir", str(plain), "--no-progress"]) == 0
    assert not (plain / "profile").exists()
    assert cli.main(["train", str(config_file), "--run-dir", str(traced), "--no-progress", "--profile",
                     "profile.steps=2"]) == 0
    assert "profile of steps 2-3" in capsys.readouterr().err
    runs = list((traced / "profile").glob("plugins/profile/*"))
    assert len(runs) == 1 and list(runs[0].glob("*.xplane.pb")) and (runs[0] / "perfetto_trace.json.gz").is_file()
    summary = (traced / "profile" / profiling.SUMMARY).read_text()
    assert summary.startswith("2 traced steps: median ") and " ms " in summary.splitlines()[2]
    assert losses(traced) == losses(plain)  # each traced step waited for, nothing else


def perfetto(tmp_path, events):
    directory = tmp_path / "plugins" / "profile" / "2026_01_01_00_00_00"
    directory.mkdir(parents=True)
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "python"}}]
    (directory / "perfetto_trace.json.gz").write_bytes(gzip.compress(json.dumps(
        {"traceEvents": meta + [{"ph": "X", "ts": 0, **e} for e in events]}).encode()))
    return tmp_path


def test_the_summary_counts_device_ops_against_the_traced_steps(tmp_path):
    trace = perfetto(tmp_path, [
        {"pid": 1, "tid": 7, "name": "train", "dur": 10_000}, {"pid": 1, "tid": 7, "name": "train", "dur": 30_000},
        {"pid": 2, "tid": 1, "name": "fusion.3", "dur": 6_000}, {"pid": 2, "tid": 1, "name": "fusion.3", "dur": 6_000},
        {"pid": 2, "tid": 2, "name": "dot.1", "dur": 20_000},
        {"pid": 1, "tid": 7, "name": "$loop.py:300 step", "dur": 35_000}])  # host Python: not an op
    lines = profiling.summarize(trace).splitlines()
    assert lines[0] == "2 traced steps: median 20.0 ms, total 40.0 ms"
    assert lines[1].startswith("compiled ops: 32.0 ms in all (80% of the steps")
    assert lines[2].split() == ["20.00", "ms", "50.0%", "dot.1"] and lines[3].split() == ["12.00", "ms", "30.0%",
                                                                                           "fusion.3"]
    assert len(lines) == 4


@pytest.mark.parametrize("field, value", [("steps", 0), ("start_step", -1)])
def test_bad_profile_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"ProfileConfig.{field} = {value}"):
        ProfileConfig(**{field: value})


def test_profile_settings_do_not_make_a_run_another_run(tmp_path):
    from gptjax.config import fingerprint
    from gptjax.config_files import load_train_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert fingerprint(load_train_config(str(path), ["profile.start_step=3"])) == fingerprint(load_train_config(str(path)))
