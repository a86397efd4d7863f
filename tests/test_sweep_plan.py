"""`gptjax sweep plan` (sweeps/plan.py): every run's mesh, compiled memory, fit and cost on a target;
one compile per distinct program; `sweep run` uses the plan and refuses what it says cannot fit."""

import dataclasses
import json

import pytest
import yaml
from helpers import TINY_RUN, require_libtpu
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError, MeshConfig
from gptjax.model import counting
from gptjax.runtime import hardware
from gptjax.sweeps import plan as plan_lib
from gptjax.sweeps import runner, spec

TINY = {**TINY_RUN, "steps": 10, "sample_tokens": 0}


def _device(memory_bytes: float) -> hardware.Accelerator:
    return hardware.Accelerator(("test",), "Test device", 1e12, 1e12, "test", f"{memory_bytes:.0f} B", memory_bytes)


def _sweep(tmp_path, grid, **extra):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "planned", "base": str(base), "grid": grid, **extra}))
    return spec.load_sweep(path)


def test_sizes_compile_once_each_and_the_cost_follows_the_flops(tmp_path):
    sweep = _sweep(tmp_path, {"model.n_layers": [1, 2], "optim.lr": [1e-3, 3e-3]})
    runs = spec.expand(sweep)
    target = plan_lib.Target("8 test devices", 8, _device(16 * 2**30))
    plan = plan_lib.plan_sweep(runs, target, None, mfu=0.5)
    assert plan["programs_compiled"] == 2 and len(plan["runs"]) == 4  # one program per size
    for run, row in zip(runs, plan["runs"]):
        cfg = run.config
        flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len) * 10 * 8 * cfg.resolved_seq_len
        assert row["flops"] == flops and row["params"] == counting.param_counts(cfg.model, 32).total
        assert row["device_hours"] == pytest.approx(flops / (1e12 * 0.5) / 3600)
        assert row["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": 1}  # a tiny model: data parallel
        assert row["fits"] is True and row["tried"][0]["peak_bytes"] == row["peak_bytes"] > 0
    assert plan["total_device_hours"] == pytest.approx(sum(r["device_hours"] for r in plan["runs"]))
    text = plan_lib.table(plan)
    assert "2 program(s) compiled for 4 run(s)" in text and "8x1x1" in text


def test_a_run_whose_state_crowds_a_device_gets_fsdp_and_one_that_cannot_fit_is_not_compiled(tmp_path):
    sweep = _sweep(tmp_path, {"model.d_model": [64]})
    (run,) = spec.expand(sweep)
    state = {m.fsdp: plan_lib._state_bytes(dataclasses.replace(run.config, mesh=m), None)
             for m in plan_lib.mesh_candidates(8)}
    assert state[1] > state[2] > state[8]
    # Room for the state at fsdp=2 within half the device, not at fsdp=1.
    capacity = 2 * (state[1] + state[2]) / 2
    mesh, _, why = plan_lib.choose_mesh(run.config, plan_lib.Target("t", 8, _device(capacity)), None)
    assert (mesh.data, mesh.fsdp) == (4, 2) and "fsdp=2" in why
    small = plan_lib.Target("t", 8, _device(state[8] / 2))
    plan = plan_lib.plan_sweep([run], small, None)
    (row,) = plan["runs"]
    assert row["fits"] is False and row["mesh"] is None and plan["programs_compiled"] == 0
    assert "parameters and optimizer state alone need" in row["why"] and "even at fsdp=8" in row["why"]


def test_what_is_tried_when_a_run_does_not_fit_is_listed(tmp_path):
    (run,) = spec.expand(_sweep(tmp_path, {"model.d_model": [64]}))
    plan = plan_lib.plan_sweep([run], plan_lib.Target("t", 8, _device(16 * 2**30)), None)
    peak = plan["runs"][0]["peak_bytes"]
    # A device a little smaller than the plain step's peak: full remat or micro-batches must help.
    tight = plan_lib.plan_sweep([run], plan_lib.Target("t", 8, _device(peak * 0.98)), None)
    (row,) = tight["runs"]
    assert [{k: v for k, v in t.items() if k != "peak_bytes"} for t in row["tried"]] == \
        [{"mesh": "8x1x1", "fits": False}, {"mesh": "8x1x1", "model.remat": "full", "fits": True}]  # full remat fits
    assert row["tried"][1]["peak_bytes"] < peak * 0.98 < row["tried"][0]["peak_bytes"] == peak
    assert row["fits"] is True and row["overrides"][-1] == "model.remat=full"
    # Smaller still: micro-batches after full remat, each tried, until none is left; it does not fit.
    data8 = MeshConfig(data=8)  # the mesh held, so that only the settings change
    none = plan_lib.plan_sweep([run], plan_lib.Target("t", 8, _device(row["tried"][1]["peak_bytes"] * 0.5), mesh=data8),
                               None)
    tried = none["runs"][0]["tried"]
    assert [t.get("optim.grad_accum") for t in tried] == [None, None]  # batch 8 over 8 devices: no micro-batch left
    assert none["runs"][0]["fits"] is False
    assert "does not fit on mesh 8x1x1 (data x fsdp x tensor) even with model.remat=full" in none["runs"][0]["why"]



def test_micro_batches_follow_full_remat_while_every_device_keeps_a_row(tmp_path):
    (run,) = spec.expand(_sweep(tmp_path, {"data.batch_size": [32]}))
    assert plan_lib.settings(run.config, 8) == [{}, {"model.remat": "full"},
                                                 {"model.remat": "full", "optim.grad_accum": 2},
                                                 {"model.remat": "full", "optim.grad_accum": 4}]


def test_sweep_run_uses_the_plan_and_refuses_what_does_not_fit(tmp_path, capsys):
    sweep = _sweep(tmp_path, {"model.n_layers": [1, 2]})
    runs = spec.expand(sweep)
    plan = plan_lib.plan_sweep(runs, plan_lib.Target("t", 8, _device(16 * 2**30)), None)
    directory = str(tmp_path / "runs")
    plan["runs"][1].update(fits=False, why="does not fit even with model.remat=full: 20.00 GiB per device over 16.00 GiB")
    plan_lib.save(directory, plan)
    with pytest.raises(ConfigError, match=r"says 1 run\(s\) do not fit, so nothing was started:\n  n_layers2-seed0: "
                                          r"does not fit even with model.remat=full"):
        runner.run_sweep(sweep, directory, dry_run=True)
    assert not (tmp_path / "runs" / "sweep.json").exists()
    runner.run_sweep(sweep, directory, dry_run=True, force=True)
    out = capsys.readouterr().out
    assert "mesh.data=8 mesh.fsdp=1 mesh.tensor=1 mesh.dcn_data=1" in out
    applied, notes = plan_lib.apply(plan_lib.read(directory), runs, force=True)
    assert applied[0].overrides[-4:] == ("mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1", "mesh.dcn_data=1")
    changed = [dataclasses.replace(r, config=dataclasses.replace(r.config, seed=5)) for r in runs]
    _, notes = plan_lib.apply(plan_lib.read(directory), changed, force=True)
    assert notes and "plan the sweep again" in notes[0]


def test_bad_targets_are_refused_before_anything_compiles(tmp_path):
    with pytest.raises(ConfigError, match="--topology 'v9x:2x2'.*not one of"):
        plan_lib.tpu_accelerator("v9x:2x2")
    with pytest.raises(ConfigError, match="--mfu 1.5"):
        plan_lib.plan_sweep([], plan_lib.Target("t", 8), None, mfu=1.5)
    sweep = _sweep(tmp_path, {"data.batch_size": [12]})
    with pytest.raises(ConfigError, match="data.batch_size = 12 is not divisible by the target's 8 devices"):
        plan_lib.plan_sweep(spec.expand(sweep), plan_lib.Target("t", 8, _device(2**30)), None)


@pytest.mark.slow
def test_the_command_plans_a_sweep_for_h100s_and_writes_the_interface_json(tmp_path):
    sweep = _sweep(tmp_path, {"model.n_layers": [1, 2], "seed": [0, 1]})
    out = gptjax("sweep", "plan", tmp_path / "sweep.yaml", "--accelerator", "h100", "--devices", 4, "--output",
                 tmp_path / "plan.json", "--run-dir", tmp_path / "runs")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {"name", "params", "flops", "mesh", "peak_bytes", "fits", "device_hours"} <= set(plan["runs"][0])
    assert plan["programs_compiled"] == 2 and len(plan["runs"]) == 4 and plan["total_device_hours"] > 0
    assert plan["target"]["devices"] == 4 and plan["runs"][0]["mesh"]["data"] == 4
    assert "4 x NVIDIA H100 SXM 80 GB" in out.stdout and (tmp_path / "runs" / "plan.csv").is_file()
    assert json.loads((tmp_path / "runs" / "plan.json").read_text())["runs"] == plan["runs"]
    assert sweep.name == "planned"


@pytest.mark.slow
def test_a_plan_for_a_tpu_slice_is_the_tpu_compilers(tmp_path):
    require_libtpu()
    _sweep(tmp_path, {"model.n_layers": [1, 2]}, overrides={"data.batch_size": 16})
    gptjax("sweep", "plan", tmp_path / "sweep.yaml", "--topology", "v5e:2x4", "--output", tmp_path / "plan.json",
           "--run-dir", tmp_path / "runs")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target"]["accelerator"] == "tpu-v5e" and plan["target"]["capacity_bytes"] == 16 * 2**30
    assert all(r["fits"] and r["mesh"]["data"] == 8 and r["compiler_peak_bytes"] for r in plan["runs"])
    assert plan["runs"][0]["peak_flops_source"] == "published: TPU v5e float32 dense"


def test_a_program_the_compiler_refuses_is_a_run_that_does_not_fit(tmp_path, monkeypatch):
    """The TPU compiler will not build a program larger than the chip (CompileTimeHbmOom): that is
    the plan's answer for that setting, with the compiler's figure, and the next one is tried."""
    from gptjax.tools import plan as tools_plan

    said = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory required for "
            "HLO temporaries (59.05G) exceeds available HBM (15.75G). HLO module: jit_step.")
    real = tools_plan.make_plan

    def make_plan(cfg, **kw):
        if cfg.model.remat != "full":
            raise RuntimeError(said)
        return real(cfg, **kw)
    monkeypatch.setattr(tools_plan, "make_plan", make_plan)
    (run,) = spec.expand(_sweep(tmp_path, {"model.d_model": [64]}))
    (row,) = plan_lib.plan_sweep([run], plan_lib.Target("t", 8, _device(16 * 2**30)), None)["runs"]
    assert row["tried"][0]["fits"] is False and row["tried"][0]["peak_bytes"] == int(59.05 * 2**30)
    assert "CompileTimeHbmOom" in row["tried"][0]["compiler"]
    assert row["fits"] is True and row["overrides"][-1] == "model.remat=full"


def test_wider_fsdp_is_tried_when_no_setting_makes_the_chosen_mesh_fit(tmp_path, monkeypatch):
    """A run whose state leaves room on a data-parallel mesh but whose step does not fit there with
    any setting (here a step that needs 100 / fsdp bytes of a 30-byte device) moves to FSDP."""
    from gptjax.tools import plan as tools_plan

    @dataclasses.dataclass
    class Compiled:
        peak_bytes: int
        compiler_peak_bytes: None = None
        temp_bytes: int = 0
    monkeypatch.setattr(plan_lib, "_state_bytes", lambda cfg, devices: 8 // cfg.mesh.fsdp)
    monkeypatch.setattr(tools_plan, "make_plan", lambda cfg, **kw: Compiled(100 // cfg.mesh.fsdp))
    (run,) = spec.expand(_sweep(tmp_path, {"model.d_model": [64]}))
    (row,) = plan_lib.plan_sweep([run], plan_lib.Target("t", 8, _device(30)), None)["runs"]
    assert [t["mesh"] for t in row["tried"]] == ["8x1x1", "8x1x1", "4x2x1", "4x2x1", "2x4x1"]
    assert row["fits"] is True and row["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1, "dcn_data": 1}
    assert row["overrides"] == ["mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1", "mesh.dcn_data=1"]
    assert row["state_bytes"] == 2  # the final mesh's state, not the first one's
