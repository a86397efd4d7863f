"""Sweeps end to end: spec expansion, the resumable runner, result.json, analysis and its plots,
ablation statistics, the Optuna search, and the μP coordinate check."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from helpers import TINY_RUN
from helpers import gptjax_cli as gptjax

from gptjax import cli
from gptjax.config import ConfigError
from gptjax.presets import PRESETS
from gptjax.sweeps import report, runner, spec

TINY = {**TINY_RUN, "steps": 6, "eval_every": 3, "checkpoint_every": 3, "sample_tokens": 0, "log_every": 1}

# Sweep orchestration (runner, retries, search, fits) is gptjax's own logic: its slow end-to-end
# tests run on the reference lane (see scripts/test.sh).
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def _sweep_file(tmp_path, base, **fields):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": base, **fields}, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("path", sorted(glob.glob("experiments/sweeps/*.yaml") + glob.glob("experiments/ablations/*.yaml")))
def test_every_sweep_file_in_the_repository_builds(path):
    runs = spec.expand(spec.load_sweep(path))
    assert runs and len({r.name for r in runs}) == len(runs)


def test_grid_zip_random_seeds_and_head_count(tmp_path, base):
    s = spec.load_sweep(_sweep_file(tmp_path, base, grid={"model.n_layers": [1, 2], "model.d_model": [32, 64]},
                                    zip={"optim.lr": [1e-3, 3e-3], "optim.warmup_steps": [1, 2]}, head_dim=8,
                                    seeds=[0, 1]))
    runs = spec.expand(s)
    assert len(runs) == 2 * 2 * 2 * 2
    by_name = {r.name: r for r in runs}
    r = by_name["n_layers2-d_model64-lr0.003-warmup_steps2-seed1"]
    assert (r.config.model.n_layers, r.config.model.d_model, r.config.model.n_heads) == (2, 64, 8)
    assert (r.config.optim.lr, r.config.optim.warmup_steps, r.config.seed) == (3e-3, 2, 1)
    assert [x.name for x in spec.expand(s)] == [x.name for x in runs], "names are deterministic"


def test_random_search_is_seeded_and_within_its_bounds(tmp_path, base):
    params = {"optim.lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2},
              "model.n_layers": {"distribution": "choice", "values": [1, 2]}}
    a = spec.expand(spec.load_sweep(_sweep_file(tmp_path, base, overrides={"optim.min_lr": 0.0}, random={"samples": 6, "seed": 3, "params": params})))
    b = spec.expand(spec.load_sweep(_sweep_file(tmp_path, base, overrides={"optim.min_lr": 0.0}, random={"samples": 6, "seed": 3, "params": params})))
    c = spec.expand(spec.load_sweep(_sweep_file(tmp_path, base, overrides={"optim.min_lr": 0.0}, random={"samples": 6, "seed": 4, "params": params})))
    lrs = [r.config.optim.lr for r in a]
    assert lrs == [r.config.optim.lr for r in b] and lrs != [r.config.optim.lr for r in c]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 6


def test_isoflop_budgets_become_steps(tmp_path, base):
    from gptjax.model import counting

    sizes = [{"model.d_model": 32, "model.n_heads": 4}, {"model.d_model": 64, "model.n_heads": 4}]
    runs = spec.expand(spec.load_sweep(_sweep_file(tmp_path, base, isoflop={"budgets": [1e11, 4e11], "sizes": sizes,
                                                                          "min_steps": 1})))
    assert len(runs) == 4
    for r in runs:
        c = r.config
        spent = c.steps * c.data.batch_size * c.resolved_seq_len * counting.flops_per_token(c.model, c.resolved_seq_len)
        assert abs(spent / r.budget - 1) < 0.05, (r.name, spent, r.budget)
    assert runs[0].name.startswith("C1e11-d_model32")


def test_a_bad_member_is_refused_before_anything_starts(tmp_path, base, capsys):
    path = _sweep_file(tmp_path, base, grid={"model.n_heads": [4, 5]})
    assert cli.main(["sweep", "run", path, "--run-dir", str(tmp_path / "s")]) == 2
    assert "run n_heads5-seed0: ModelConfig.d_model = 32 is invalid: must be divisible by n_heads = 5" in \
        capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="zip lists must have equal lengths"):
        spec.load_sweep(_sweep_file(tmp_path, base, zip={"optim.lr": [1, 2], "seed": [1]}))


def test_cpu_shares_are_disjoint():
    shares = runner.device_shares(2) if len(os.sched_getaffinity(0)) >= 2 else pytest.skip("needs 2 cores")
    assert not shares[0]["cpus"] & shares[1]["cpus"] and all(s["cpus"] for s in shares)


@pytest.mark.slow
def test_a_sweep_runs_records_failures_skips_what_is_done_and_resumes(tmp_path, base):
    # Two sizes and a third run that diverges (its loss turns NaN at step 2).
    path = _sweep_file(tmp_path, base, zip={"model.d_model": [32, 48, 32], "faults.nan_at_step": [None, None, 2]})
    d = tmp_path / "sweep"
    out = gptjax("sweep", "run", path, "--run-dir", d, "--jobs", 2, "--no-progress", check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "3 runs: 2 finished, 1 failed" in out.stdout and "non-finite loss at step 2" in out.stdout
    result = json.loads((d / "d_model32-nan_at_stepNone-seed0" / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 6 and result["tokens"] == 6 * 8 * 32
    assert result["best_val_loss"] <= result["final_val_loss"] and result["wall_time_s"] > 0
    assert result["non_embedding_params"] < result["params"] and result["flops"] == result["flops_per_token"] * 6 * 8 * 32
    # The same command again runs nothing; --retry-failed runs the failed one only.
    again = gptjax("sweep", "run", path, "--run-dir", d, "--no-progress", check=False)
    assert "0 of 3 runs to run" in again.stderr
    retry = gptjax("sweep", "run", path, "--run-dir", d, "--no-progress", "--retry-failed", "--dry-run")
    assert sum(line.startswith("run ") for line in retry.stdout.splitlines()) == 1 and "1 of 3 runs" in retry.stdout
    # An interrupted run (no result, checkpoints) resumes from its checkpoint.
    victim = d / "d_model48-nan_at_stepNone-seed0"
    (victim / "result.json").unlink()
    shutil.rmtree(victim / "checkpoints" / "6")
    assert runner.status_of(str(victim))[0] == "interrupted"
    resumed = gptjax("sweep", "run", path, "--run-dir", d, "--no-progress", check=False)
    assert "1 of 3 runs to run" in resumed.stderr
    assert "resumed from step 3" in (d / "logs" / "d_model48-nan_at_stepNone-seed0.log").read_text()
    assert gptjax("sweep", "status", d).stdout.startswith(f"{d}: 3 runs: 2 finished, 1 failed")
    # Analysis of what ran.
    out = gptjax("sweep", "analyze", d, "--bootstrap", 5)
    rows = (d / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("name,status,seed,budget,variant")
    assert (d / "report.md").is_file() and (d / "loss_curves.png").stat().st_size > 1000


def _synthetic_sweep(d, rows):
    """A sweep directory as runs would leave it (manifest + result.json), without training."""
    entries = []
    for r in rows:
        run_dir = d / r["name"]
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps({"status": "finished", **r["result"]}))
        entries.append({"name": r["name"], "run_dir": str(run_dir), "overrides": [], "point": r.get("point", {}),
                        "seed": r.get("seed", 0), "budget": r.get("budget")})
    (d / "sweep.json").write_text(json.dumps({"name": "synthetic", "base": "x", "runs": entries}))


CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def law(n, t):
    c = CHINCHILLA
    return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / t ** c["beta"]


@pytest.mark.slow
def test_analysis_recovers_a_known_law_and_extrapolates(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for budget in (1e18, 1e19, 1e20, 1e21):
        for n in np.geomspace(2e7, 2e10, 8):
            t = budget / (6 * n)
            loss = law(n, t) * (1 + 1e-3 * rng.standard_normal())
            rows.append({"name": f"C{budget:.0e}-N{n:.2e}-seed0", "budget": budget,
                         "result": {"non_embedding_params": n, "params": n, "tokens": t, "flops": budget,
                                    "final_val_loss": loss, "best_val_loss": loss}})
    _synthetic_sweep(tmp_path, rows)
    summary = report.analyze(str(tmp_path), holdout_largest=1, bootstrap=20)
    fit = summary["fits"]["chinchilla"]
    for k, v in CHINCHILLA.items():
        assert abs(fit[k] / v - 1) < 0.05, (k, fit[k], v)
    assert summary["fits"]["isoflop"]["a"] == pytest.approx(0.28 / 0.62, rel=0.1)
    assert max(abs(r["relative_error"]) for r in summary["holdout"]["rows"]) < 0.01
    assert {"loss_vs_params.png", "isoflop.png", "frontier.png", "holdout.png"} <= set(summary["plots"])
    md = (tmp_path / "report.md").read_text()
    assert "Chinchilla approach 3" in md and "Extrapolation" in md and "![isoflop.png](isoflop.png)" in md
    # The CSV analyze wrote is what `gptjax sweep fit` reads.
    out = gptjax("sweep", "fit", tmp_path / "results.csv", "--law", "chinchilla", "--json")
    assert {"E", "A", "B", "alpha", "beta"} <= set(json.loads(out.stdout))


def test_ablation_statistics_tell_a_real_difference_from_seed_noise(tmp_path):
    rng = np.random.default_rng(1)
    means = {"positionlearned": 2.00, "positionrotary": 2.10, "positionalibi": 2.001}
    rows = [{"name": f"{v}-seed{s}", "seed": s, "result": {"final_val_loss": m + 0.01 * rng.standard_normal(),
                                                          "non_embedding_params": 1000, "params": 1200, "tokens": 1e5}}
            for v, m in means.items() for s in range(4)]
    _synthetic_sweep(tmp_path, rows)
    summary = report.analyze(str(tmp_path), holdout_largest=0, bootstrap=0)
    by = {r["variant"]: r for r in summary["ablation"]}
    assert by["positionrotary"]["significant"] and by["positionrotary"]["p"] < 1e-3
    assert not by["positionalibi"]["significant"]
    assert "ablation.png" in summary["plots"] and "beyond seed noise" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_optuna_search_with_two_workers_and_pruning(tmp_path, base):
    path = _sweep_file(tmp_path, base, overrides={"steps": 6, "eval_every": 2, "optim.min_lr": 0.0},
                       search={"trials": 4, "startup_trials": 1,
                               "params": {"optim.lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}}})
    d = tmp_path / "search"
    out = gptjax("sweep", "search", path, "--run-dir", d, "--workers", 2, timeout=900)
    summary = json.loads(out.stdout)
    assert summary["trials"] >= 4 and summary["best_value"] is not None
    assert 1e-4 <= summary["best_params"]["optim.lr"] <= 1e-1
    assert sum(summary["states"].values()) == summary["trials"]
    assert (d / "optuna.db").is_file() and len(glob.glob(str(d / "trial-*"))) == summary["trials"]


@pytest.mark.slow
def test_mup_coordinates_stay_flat_across_widths_and_standard_ones_grow(base):
    from gptjax.config_files import load_train_config
    from gptjax.sweeps import mup

    cfg = load_train_config(base, ["model.n_layers=2", "model.n_heads=2", "model.d_model=32", "model.d_ff=null",
                                   "optim.lr=1e-2", "optim.warmup_steps=0", "optim.grad_clip=null",
                                   "model.mup_base_width=32"])
    summary = mup.run(cfg, [32, 64, 128, 256], 4, None)
    standard, mu = summary["growth"]["standard"], summary["growth"]["mup"]
    for key in ("block 0", "block 1"):
        assert standard[key] > 0.6, (key, standard)  # grows about like width^1
        assert abs(mu[key]) < 0.2, (key, mu)  # flat


def test_mup_attention_scale_is_one_over_d_anchored_at_the_base_head_size():
    from gptjax.config import ModelConfig

    base = dict(vocab_size=64, max_seq_len=16, n_layers=1, parametrization="mup", mup_base_width=64)
    # Width grown by heads of a fixed size: the head size is the base one, the scale stays 1/sqrt(d).
    wide = ModelConfig(d_model=256, n_heads=16, **base)
    assert wide.resolved_head_dim == 16 and wide.softmax_scale == pytest.approx(1 / 4)
    # Width grown by head size (4 heads of 16 at the base, 4 of 64 here): 1/d times sqrt(16).
    grown = ModelConfig(d_model=256, n_heads=4, mup_base_head_dim=16, **base)
    assert grown.softmax_scale == pytest.approx(4 / 64)
    assert ModelConfig(d_model=64, n_heads=4, mup_base_head_dim=16, **base).softmax_scale == pytest.approx(1 / 4)


# --- a study's runs are the runs its file describes ----------------------------------------------


def _two_run_sweep(tmp_path, base, **overrides):
    return _sweep_file(tmp_path, base, overrides={"optim.warmup_steps": 2, **overrides},
                       grid={"model.d_model": [32, 48]})


@pytest.mark.slow
def test_a_changed_shared_setting_stops_the_sweep_until_rerun_changed(tmp_path, base):
    d = tmp_path / "sweep"
    path = _two_run_sweep(tmp_path, base)
    gptjax("sweep", "run", path, "--run-dir", d, "--jobs", 2, "--no-progress")
    names = ["d_model32-seed0", "d_model48-seed0"]
    spec_before = (d / "sweep.yaml").read_text()
    stamps = {n: (d / n / "result.json").stat().st_mtime_ns for n in names}
    # The same name, another warmup: the finished runs no longer are what the file describes.
    changed = _two_run_sweep(tmp_path, base, **{"optim.warmup_steps": 3})
    out = gptjax("sweep", "run", changed, "--run-dir", d, "--no-progress", check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    for name in names:
        assert f"{name}: optim.warmup_steps: 2 in the run, 3 in the sweep file" in out.stderr
    assert "Nothing was started or moved" in out.stderr and "--rerun-changed" in out.stderr
    assert {n: (d / n / "result.json").stat().st_mtime_ns for n in names} == stamps
    assert (d / "sweep.yaml").read_text() == spec_before and not (d / "superseded").exists()
    # status: stale against the changed file, current against the directory's own spec.
    assert gptjax("sweep", "status", d, changed).stdout.startswith(
        f"{d}: 2 runs: 0 finished, 0 failed, 0 interrupted, 0 pending, 2 stale")
    assert "stale d_model32-seed0: optim.warmup_steps 2 -> 3" in gptjax("sweep", "status", d, changed).stdout
    assert gptjax("sweep", "status", d).stdout.startswith(f"{d}: 2 runs: 2 finished")
    # --rerun-changed keeps the old runs under superseded/ and trains the new ones to the end.
    rerun = gptjax("sweep", "run", changed, "--run-dir", d, "--jobs", 2, "--no-progress", "--rerun-changed")
    assert "2 runs: 2 finished" in rerun.stdout
    (old,) = list((d / "superseded").iterdir())
    for name in names:
        assert yaml.safe_load((old / name / "config.yaml").read_text())["optim"]["warmup_steps"] == 2
        assert yaml.safe_load((d / name / "config.yaml").read_text())["optim"]["warmup_steps"] == 3
        assert json.loads((d / name / "result.json").read_text())["status"] == "finished"
    assert (old / "sweep.yaml").read_text() == spec_before
    assert yaml.safe_load((d / "sweep.yaml").read_text())["overrides"]["optim.warmup_steps"] == 3
    assert gptjax("sweep", "status", d).stdout.startswith(f"{d}: 2 runs: 2 finished")


@pytest.mark.slow
def test_evaluations_and_execution_added_to_a_finished_study_keep_its_runs(tmp_path, base):
    d = tmp_path / "sweep"
    gptjax("sweep", "run", _two_run_sweep(tmp_path, base), "--run-dir", d, "--no-progress")
    held = tmp_path / "held.txt"
    held.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    more = _two_run_sweep(tmp_path, base, **{"eval.sets": {"held": str(held)}, "mesh.data": 2, "log_every": 2})
    out = gptjax("sweep", "run", more, "--run-dir", d, "--no-progress")
    assert "0 of 2 runs to run" in out.stderr and "stale" not in out.stdout + out.stderr
    # The spec changed (not what the runs trained): the new one is written, the old one kept, said.
    assert "the previous one is kept in" in out.stderr
    assert yaml.safe_load((d / "sweep.yaml").read_text())["overrides"]["eval.sets"] == {"held": str(held)}
    assert len(list((d / "superseded").glob("*/sweep.yaml"))) == 1


@pytest.mark.slow
def test_analyze_leaves_stale_runs_out_and_says_so(tmp_path, base):
    d = tmp_path / "sweep"
    gptjax("sweep", "run", _two_run_sweep(tmp_path, base), "--run-dir", d, "--no-progress")
    config = d / "d_model48-seed0" / "config.yaml"
    text = yaml.safe_load(config.read_text())
    text["optim"]["lr"] = 0.1  # as if trained with another learning rate than the spec says
    config.write_text(yaml.safe_dump(text))
    summary = report.analyze(str(d), holdout_largest=0, bootstrap=0)
    assert summary["finished"] == 1
    assert any("1 stale run(s) left out" in w and "d_model48-seed0" in w for w in summary["warnings"])
    md = (d / "report.md").read_text()
    assert md.index("## Warnings") < md.index("stale run(s) left out")
    csv = (d / "results.csv").read_text()
    assert "stale" in csv and "optim.lr 0.003 -> 0.1" not in csv  # the change recorded as run -> file
    assert "optim.lr 0.1 -> 0.003" in csv


def test_the_repositorys_sweep_files_run_from_any_directory(tmp_path, monkeypatch, capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(glob.glob(f"{root}/experiments/sweeps/*.yaml") + glob.glob(f"{root}/experiments/ablations/*.yaml"))
    monkeypatch.chdir(tmp_path)
    for path in files:
        sweep = spec.load_sweep(path)
        # The base: the repository's config resolved against the sweep file, or a preset's name.
        assert sweep.base == os.path.join(root, "experiments", "shakespeare_char.yaml") or sweep.base in PRESETS, path
        assert spec.expand(sweep)
    assert "warning" not in capsys.readouterr().err


def test_a_sweep_resolves_its_paths_against_itself_and_stores_them_resolved(tmp_path, base, monkeypatch):
    study = tmp_path / "study"
    (study / "data").mkdir(parents=True)
    (study / "data" / "held.txt").write_text("held out text\n")
    shutil.copy(base, study / "base.yaml")
    path = study / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": "base.yaml", "overrides": {"eval.sets": {"h": "data/held.txt"}},
                                    "grid": {"model.d_model": [32]}}))
    monkeypatch.chdir(tmp_path)
    sweep = spec.load_sweep(path)
    assert sweep.base == str(study / "base.yaml")
    (run,) = spec.expand(sweep)
    assert run.config.eval.sets == {"h": str(study / "data" / "held.txt")}
    runner.write_spec(str(tmp_path / "dir"), sweep, str(tmp_path / "archive"))
    stored = spec.load_sweep(tmp_path / "dir" / "sweep.yaml")  # loads the same from anywhere
    assert stored == sweep and [r.config for r in spec.expand(stored)] == [run.config]


def test_a_sweep_with_wandb_groups_its_runs_by_its_name(tmp_path, base):
    runs = spec.expand(spec.load_sweep(_sweep_file(tmp_path, base, overrides={"logging.wandb": {"mode": "offline"}},
                                                   grid={"model.d_model": [32, 48]})))
    assert {r.config.logging.wandb.group for r in runs} == {"t"}


@pytest.mark.slow
def test_sweep_eval_measures_a_finished_study_as_training_would(tmp_path, base):
    d = tmp_path / "sweep"
    gptjax("sweep", "run", _two_run_sweep(tmp_path, base), "--run-dir", d, "--jobs", 2, "--no-progress")
    held = tmp_path / "held.txt"
    held.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 3)
    assert gptjax("sweep", "eval", d, check=False).returncode == 2  # nothing to measure
    # A run that measured the set while training (the same run: eval.sets changes nothing trained).
    ref = gptjax("train", base, "optim.warmup_steps=2", "model.d_model=48", f"eval.sets={{held: {held}}}",
                 "--run-dir", tmp_path / "ref", "--no-progress")
    assert ref.returncode == 0
    out = gptjax("sweep", "eval", d, "--set", f"held={held}")
    assert "measured 2 run(s)" in out.stdout
    mine = json.loads((d / "d_model48-seed0" / "result.json").read_text())["evals"]["held"]
    theirs = json.loads((tmp_path / "ref" / "result.json").read_text())["evals"]["held"]
    assert mine["step"] == theirs["step"] == 6 and mine["added_by"] == "gptjax sweep eval"
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5) and mine["bpb"] == pytest.approx(theirs["bpb"],
                                                                                                     rel=1e-5)
    again = gptjax("sweep", "eval", d, "--set", f"held={held}")
    assert "measured 0 run(s), 2 already had the metric(s)" in again.stdout
    # analyze fits and lists by the new metric; a run without it is named.
    result = d / "d_model32-seed0" / "result.json"
    data = json.loads(result.read_text())
    del data["evals"]["held"]
    result.write_text(json.dumps(data))
    summary = report.analyze(str(d), holdout_largest=0, bootstrap=0, metric="eval/held/bpb")
    assert summary["metric"] == "eval/held/bpb"
    assert any("1 finished run(s) have no eval/held/bpb" in w and "d_model32-seed0" in w for w in summary["warnings"])
    assert "eval/held/bpb" in (d / "results.csv").read_text().splitlines()[0]
