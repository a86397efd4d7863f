"""The command line: params table, unknown names, conversion round trip."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_RUN

from gptjax import cli, init_model, save_pretrained
from gptjax.config import ModelConfig
from gptjax.interop.pretrained import from_pretrained


def test_params_prints_exact_counts(capsys):
    assert cli.main(["params", "gpt2", "pythia-70m"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "70,426,624" in out and "18,915,328" in out


def test_unknown_preset_names_the_nearest(capsys):
    assert cli.main(["params", "gpt-2"]) == 2
    assert "did you mean gpt2" in capsys.readouterr().err.replace("'", "")


@pytest.mark.slow
def test_convert_to_hf_and_back_is_bit_identical(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=97, max_seq_len=16, d_model=40, n_layers=2, n_heads=5)
    model = init_model(cfg, seed=3)
    save_pretrained(model, tmp_path / "native")
    assert cli.main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "gptjax"]) == 0
    back = from_pretrained(tmp_path / "back")
    t = jnp.arange(12).reshape(1, 12)
    np.testing.assert_array_equal(np.asarray(model(t)), np.asarray(back(t)))


def test_overrides_must_look_like_assignments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "gpt2", "--run-dir", "x", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def _options(parser, path=("gptjax",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action


def test_every_flag_says_what_it_does_and_its_default(capsys):
    missing = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in _options(cli.build_parser()) if not a.help]
    assert missing == []
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 is greedy (default: 0.8)" in text and "samples per prompt (default: 1)" in text
    assert "sampling seed (default: 0)" in text  # a default of 0 is a default too


def test_version_and_the_internal_verb_stays_out_of_the_listing(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"gptjax {metadata.version('gptjax')}"
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    listing = capsys.readouterr().out
    assert "search-worker" not in listing and "coord-check" in listing
    assert cli.build_parser().parse_args(["sweep", "search-worker", "s.yaml", "--run-dir", "d"]).sweep == "s.yaml"


TINY = {**TINY_RUN, "steps": 8, "eval_every": 8, "checkpoint_every": 4, "sample_tokens": 0}


def test_out_of_device_memory_says_what_to_do_and_keeps_the_last_checkpoint(config_file, tmp_path, monkeypatch,
                                                                            capsys):
    """Injected, never provoked: the compiled step reports RESOURCE_EXHAUSTED at step 6. The run
    stops with exit 1, the device's memory, the plan command for this config and what lowers the
    need; step 4's checkpoint is intact and the same command resumes from it."""
    import jax

    from gptjax.training import trainer

    make_step = trainer.make_train_step

    def failing(tr):
        step, calls = make_step(tr), [0]

        def run(*args):
            calls[0] += 1
            if calls[0] == 6:
                raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.")
            return step(*args)

        run.lower = step.lower
        return run

    monkeypatch.setattr(trainer, "make_train_step", failing)
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(config_file), "steps=8", "--run-dir", str(run_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "out of device memory (RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.)" in err
    assert f"`gptjax plan {config_file} steps=8` shows what each part of the step needs" in err
    assert "model.remat=full" in err and "GiB; " in err and "Traceback" not in err
    monkeypatch.setattr(trainer, "make_train_step", make_step)
    assert cli.main(["train", str(config_file), "steps=8", "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert "resumed from step 4" in capsys.readouterr().err
