"""Config: the fingerprint of what a run trains, and how relative paths resolve (against the file
that names them, wherever the command runs)."""

import os
import pathlib

import pytest
import yaml
from helpers import TINY_RUN

from gptjax import config
from gptjax.config import ConfigError
from gptjax.config_files import load_train_config

BASE = {**TINY_RUN, "steps": 6}


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return str(path)


# Fields that change how a run executes, evaluates or reports, never what it trains: a sweep plan
# may choose them per run, and a finished study may add evaluations.
UNTRAINED = ["mesh.data=2", "mesh.fsdp=4", "model.remat=full", "model.scan_layers=false",
             "model.attention_impl=xla", "optim.grad_accum=2", "eval_every=3", "eval_batch_size=128",
             "checkpoint_every=2", "keep_last=3", "log_every=5", "sample_tokens=7", "peak_flops=2e11",
             "eval.tasks_every=3", "logging.wandb={mode: offline}", "name=other", "faults.kill_at_step=3",
             "data.encode_threads=1"]
TRAINED = ["optim.warmup_steps=5", "optim.lr=1e-3", "seed=1", "steps=7", "data.batch_size=16",
           "model.d_model=48", "model.compute_dtype=bfloat16", "model.resid_dropout=0.1", "optim.z_loss=1e-4",
           "data.val_fraction=0.2", "faults.nan_at_step=3", "nan_policy=skip", "data.seq_len=16"]


@pytest.mark.parametrize("override", UNTRAINED)
def test_execution_evaluation_and_logging_fields_leave_the_fingerprint(base_file, override):
    a, b = load_train_config(base_file), load_train_config(base_file, [override])
    assert config.flat_fields(a) != config.flat_fields(b), "the override must change the config at all"
    assert config.fingerprint(a) == config.fingerprint(b) and config.trained_changes(a, b) == []


@pytest.mark.parametrize("override", TRAINED)
def test_fields_that_change_what_is_trained_change_the_fingerprint(base_file, override):
    a, b = load_train_config(base_file), load_train_config(base_file, [override])
    assert config.fingerprint(a) != config.fingerprint(b)
    (field, old, new), = config.trained_changes(a, b)
    assert field == override.split("=")[0] and old != new


def test_adding_an_eval_set_keeps_the_fingerprint(base_file, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("some held-out text\n")
    a = load_train_config(base_file)
    b = load_train_config(base_file, [f"eval.sets={{held: {held}}}"])
    assert b.eval.sets == {"held": str(held)} and config.fingerprint(a) == config.fingerprint(b)


def test_an_explicit_seq_len_equal_to_the_context_is_the_same_run(base_file):
    a = load_train_config(base_file)
    b = load_train_config(base_file, [f"data.seq_len={a.model.max_seq_len}"])
    assert config.fingerprint(a) == config.fingerprint(b)


# --- paths -------------------------------------------------------------------------------------


def _layout(tmp_path):
    """project/configs/run.yaml names data/corpus.txt relative to itself (../data/corpus.txt)."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "data" / "corpus.txt").write_text("hello world\n" * 100)
    (project / "data" / "held.txt").write_text("held out\n")
    cfg = {**BASE, "data": {"text_files": ["../data/corpus.txt"], "tokenizer": "char", "batch_size": 8},
           "eval": {"sets": {"held": "../data/held.txt"}}}
    path = project / "configs" / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return project, path


def test_relative_paths_in_a_config_file_resolve_against_the_file_from_any_directory(tmp_path, monkeypatch, capsys):
    project, path = _layout(tmp_path)
    for cwd in (tmp_path, project / "configs", pathlib.Path("/")):
        monkeypatch.chdir(cwd)
        cfg = load_train_config(str(path))
        assert cfg.data.text_files == (str(project / "data" / "corpus.txt"),)
        assert cfg.eval.sets == {"held": str(project / "data" / "held.txt")}
    assert "warning" not in capsys.readouterr().err


def test_a_path_found_only_from_the_current_directory_is_used_with_a_warning(tmp_path, monkeypatch, capsys):
    project, path = _layout(tmp_path)
    text = path.read_text().replace("../data/corpus.txt", "data/corpus.txt")  # written for the project root
    path.write_text(text)
    monkeypatch.chdir(project)
    cfg = load_train_config(str(path))
    assert cfg.data.text_files == (str(project / "data" / "corpus.txt"),)
    err = capsys.readouterr().err
    assert "'data/corpus.txt' is not found beside the file" in err and "write '../data/corpus.txt'" in err


def test_command_line_paths_are_relative_to_the_current_directory_and_names_stay_names(tmp_path, monkeypatch):
    project, path = _layout(tmp_path)
    monkeypatch.chdir(project / "data")
    cfg = load_train_config(str(path), ["data.text_files=[held.txt]", "eval.sets={h: corpus.txt}"])
    assert cfg.data.text_files == (str(project / "data" / "held.txt"),)
    assert cfg.eval.sets == {"h": str(project / "data" / "corpus.txt")}
    named = load_train_config(str(path), ["data.text_files=[]", "data.corpus=tinyshakespeare"])
    assert named.data.corpus == "tinyshakespeare"


def test_environment_variables_in_paths_are_expanded_or_refused(tmp_path, monkeypatch):
    project, path = _layout(tmp_path)
    monkeypatch.setenv("CORPORA", str(project / "data"))
    cfg = load_train_config(str(path), ["data.text_files=['${CORPORA}/corpus.txt']"])
    assert cfg.data.text_files == (str(project / "data" / "corpus.txt"),)
    monkeypatch.delenv("CORPORA")
    with pytest.raises(ConfigError, match=r"names \$CORPORA, which is not set"):
        load_train_config(str(path), ["data.text_files=['${CORPORA}/corpus.txt']"])


def test_globs_resolve_against_the_file_too(tmp_path, monkeypatch):
    project, path = _layout(tmp_path)
    path.write_text(path.read_text().replace("../data/corpus.txt", "../data/*.txt"))
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(str(path))
    assert cfg.data.text_files == (os.path.join(project, "data", "*.txt"),)
