"""Tracking: progress lines for logs without a terminal, and Weights & Biases in offline mode (files
written under the run directory and read back here; nothing reaches the network)."""

import glob
import io
import json
import os
import struct

import pytest
import yaml
from helpers import TINY_RUN, reference
from helpers import gptjax_cli as gptjax

from gptjax.training import tracking

TINY = {**TINY_RUN, "steps": 4, "eval_every": 4, "checkpoint_every": 2, "sample_tokens": 0}


def test_progress_lines_come_every_log_every_steps_with_an_eta_from_training_steps_only():
    out = io.StringIO()
    lines = tracking.ProgressLines(total=100, every=10, enabled=True, out=out)
    for step in range(1, 31):
        # Step 20 took long (an evaluation's time leaked into it): the ETA must not jump with it.
        lines.step({"step": step, "loss": 2.0, "lr": 1e-3, "tokens_per_sec": 1000.0, "mfu": 0.1},
                   seconds=30.0 if step == 20 else 1.0)
    printed = out.getvalue().splitlines()
    assert [line.split()[1] for line in printed] == ["10/100", "20/100", "30/100"]
    assert printed[0] == "step 10/100 (10%) loss 2.0000 lr 0.001 tok/s 1K mfu 10.0% eta 1m30s"
    assert printed[1].endswith("eta 1m20s") and printed[2].endswith("eta 1m10s")  # the median: 1 s a step
    quiet = io.StringIO()
    tracking.ProgressLines(total=10, every=1, enabled=False, out=quiet).step(
        {"step": 1, "loss": 1.0, "lr": 1.0, "tokens_per_sec": 1.0, "mfu": 0.0}, 1.0)
    assert quiet.getvalue() == ""


_BLOCK, _HEADER = 32768, 7


def _wandb_records(path):
    """The records of a W&B transaction log (.wandb: LevelDB-log framing of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # the block's tail is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + _HEADER:pos + _HEADER + length], pos + _HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_is_one_run_across_restarts_with_config_metrics_and_result(tmp_path):
    reference("wandb")
    cfg = {**TINY, "logging": {"wandb": {"project": "gptjax-test", "group": "g", "mode": "offline"}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    env = {"WANDB_SILENT": "true"}
    gptjax("train", tmp_path / "tiny.yaml", "--run-dir", run_dir, "--no-progress", "steps=2", env=env)
    gptjax("train", tmp_path / "tiny.yaml", "--run-dir", run_dir, "--no-progress", env=env)
    run_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    logs = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")))
    assert len(logs) == 2, "each start continues the same W&B run id"
    history, summary, runs = [], {}, []
    for path in logs:
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                runs.append(record.run)
            elif kind == "history":
                history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
            elif kind == "summary":
                summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    assert {(r.run_id, r.project, r.run_group) for r in runs} == {(run_id, "gptjax-test", "g")}
    config = {_key(item): json.loads(item.value_json) for item in runs[0].config.update}
    assert config["model"]["d_model"] == 32 and config["steps"] == 2  # the first start's config
    rows = [h for h in history if "loss" in h]
    assert [h["step"] for h in rows] == [1, 2, 3, 4]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["loss"] for h in rows] == [m["loss"] for m in metrics]
    result = json.loads((run_dir / "result.json").read_text())
    assert summary["final_val_loss"] == result["final_val_loss"] and summary["tokens"] == result["tokens"]
    saved = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "result.json"))
    assert saved and json.loads(open(max(saved, key=os.path.getmtime)).read()) == result


def test_wandb_without_the_package_is_refused_before_anything_starts(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    from gptjax.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging.wandb needs the wandb package: pip install 'gptjax\[wandb\]'"):
        tracking.require_wandb()


def test_the_bars_eta_leaves_out_evaluation_time():
    """The training loop unpauses its tqdm bar after each evaluation and save: the rate, and so the
    ETA, count training steps only (the README's main command showed 13 minutes left after each
    evaluation of a 3-minute run)."""
    import tqdm

    clock = [0.0]
    bar = tqdm.tqdm(total=100, file=io.StringIO(), mininterval=0, miniters=1)
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    for _ in range(10):
        clock[0] += 1.0
        bar.update(1)
    clock[0] += 600.0  # an evaluation
    bar.unpause()
    clock[0] += 1.0
    bar.update(1)
    assert bar.format_dict["rate"] == pytest.approx(1.0) and bar.format_dict["elapsed"] == pytest.approx(11.0)

