"""The run directory: its layout and all its file I/O, local or on gs:// / s3:// (paths.py).

    config.yaml          the resolved config the run continues with
    config.<step>.yaml   history: the config in force from <step> on, one per (re)start that changed it
    run.json             provenance of the first start, and of every later one under "starts"
    launch.json          what a launcher submitted (launchers only)
    tokenizer.json       the tokenizer, so inspection decodes exactly as training encoded
    metrics.jsonl        one JSON row per logged step, each step once (resume truncates)
    checkpoints/         Orbax steps with their manifests (checkpoint.py)
    tensorboard/         event files
    samples/step_N.txt   the sample written at the end of a run
    lock.json            who writes this run directory now (lock.py: one writer at a time)

Only the training run that owns a directory writes to it. `RunDir(path, read_only=True)` (what
sampling, conversion, evaluation and from_pretrained use) never creates, renames, writes or
deletes anything there, and restores parameters only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import draccus
import yaml

from gptjax.config import ConfigError, TrainConfig, fingerprint, from_dict
from gptjax.data import tokenizer as tok_lib
from gptjax.store import paths, provenance
from gptjax.store.tensor_files import CheckpointError

if TYPE_CHECKING:
    from gptjax.store import checkpoint

CONFIG = "config.yaml"
RUN_INFO = "run.json"
LAUNCH_INFO = "launch.json"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
SAMPLES = "samples"
# What launchers write into a run directory before the run itself starts (launch/), and what a
# run writes before its config.yaml (a first start that failed early may leave them).
LAUNCHER_FILES = (LAUNCH_INFO, "sbatch.sh", "slurm-*.out")
OWN_FILES = LAUNCHER_FILES + (CHECKPOINTS, TENSORBOARD, RUN_INFO, TOKENIZER, METRICS, "config.*.yaml", "lock.json", "watchdog-*.txt", "fault-hung")


class RunDir:
    def __init__(self, path, *, read_only: bool = False):
        self.path = paths.as_path(path)
        self.read_only = read_only

    def __str__(self) -> str:
        return os.fspath(self.path)

    def file(self, name: str):
        return self.path / name

    # --- reading ----------------------------------------------------------------------------

    def has_config(self) -> bool:
        return self.file(CONFIG).exists()

    def read_config(self) -> TrainConfig:
        if not self.has_config():
            raise FileNotFoundError(f"{self} is not a run directory: it has no {CONFIG}")
        try:
            return from_dict(TrainConfig, yaml.safe_load(self.file(CONFIG).read_text()))
        except ConfigError as e:
            raise ConfigError(f"{self.file(CONFIG)} cannot be read by this gptjax: {e}") from None

    def read_tokenizer(self) -> tok_lib.Tokenizer:
        return tok_lib.from_dict(json.loads(self.file(TOKENIZER).read_text()))

    def checkpoints(self, cfg: TrainConfig) -> checkpoint.Checkpoints:
        from gptjax.store import checkpoint  # Orbax and JAX: not for launchers, which only record

        return checkpoint.Checkpoints(self.file(CHECKPOINTS), cfg.keep_last, cfg.keep_every, read_only=self.read_only)

    def restore_params(self, cfg: TrainConfig, target: dict, what: str = "") -> tuple[dict, dict]:
        """(parameters, meta) of the newest verified checkpoint, restored into `target`'s shapes
        and shardings; raises CheckpointError when there is none (`what` names who asked)."""
        ckpts = self.checkpoints(cfg)
        try:
            restored = ckpts.restore_params(target)
        finally:
            ckpts.close()
        if restored is None:
            raise CheckpointError(f"{what}{self.file(CHECKPOINTS)} holds no checkpoint yet")
        return restored

    def has_checkpoints(self) -> bool:
        directory = self.file(CHECKPOINTS)
        return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())

    def read_metrics(self) -> list[dict]:
        if not self.file(METRICS).exists():
            return []
        rows = []
        for line in self.file(METRICS).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return rows

    # --- resuming ---------------------------------------------------------------------------

    def check_usable(self) -> None:
        """A run trains into a new or empty directory, its own run directory, or one holding only
        what gptjax's launchers write before the run starts: never into a file, nor into someone
        else's files (a mistyped path once trained into an unrelated directory without a word)."""
        if paths.is_remote(self.path) or not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"run directory {self} is a file; give a new directory, an empty one or a run directory")
        if self.has_config():
            return
        foreign = sorted(p.name for p in self.path.iterdir()
                         if not any(fnmatch.fnmatch(p.name, pattern) for pattern in OWN_FILES))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(f"run directory {self} is not empty and holds no gptjax run (no {CONFIG}; it holds "
                              f"{shown}); give a new directory, an empty one or a run directory")

    def check_tokenizer(self, tokenizer: tok_lib.Tokenizer) -> None:
        if self.has_checkpoints() and self.file(TOKENIZER).exists():
            saved = json.loads(self.file(TOKENIZER).read_text())
            if saved != tokenizer.to_dict():
                self.refuse([("tokenizer", _short(saved), _short(tokenizer.to_dict()))],
                             "the vocabulary its embeddings were trained on")

    def refuse(self, refused: list[tuple[str, Any, Any]], what: str) -> None:
        """Raise: this config cannot resume the run, because of `refused` (field, old, new)."""
        lines = "\n".join(f"  {k}: {a!r} in {self.file(CONFIG)}, {b!r} now" for k, a, b in refused)
        raise ConfigError(
            f"run directory {self} cannot be resumed with this config: it changes {what}:\n{lines}\n"
            f"Nothing was changed. Resume with the run's own config (gptjax train {self.file(CONFIG)} "
            f"--run-dir {self}), or start a new run with --run-dir NEW_DIR.")

    # --- writing (the owning run only, process 0 only) --------------------------------------

    def _writable(self) -> bool:
        if self.read_only:
            raise PermissionError(f"{self} was opened read-only")
        import jax

        return jax.process_index() == 0

    def record_start(self, cfg: TrainConfig, tokenizer, step: int, changes: list) -> None:
        """config.yaml (and a history entry when it changed), run.json and tokenizer.json."""
        if not self._writable():
            return
        text = draccus.dump(cfg)
        if not self.has_config() or changes:
            paths.write_text(self.file(f"config.{step}.yaml"), text)
        paths.write_text(self.file(CONFIG), text)
        info = json.loads(self.file(RUN_INFO).read_text()) if self.file(RUN_INFO).exists() else {}
        start = {**provenance.describe(), "step": step, "fingerprint": fingerprint(cfg),
                 "changed": {k: [a, b] for k, a, b in changes} if self.has_checkpoints() else {}}
        if not info:
            info = {**start, "starts": []}
        info["starts"] = info.get("starts", []) + [start]
        info["fingerprint"] = start["fingerprint"]  # of the config.yaml beside it (config.fingerprint)
        paths.write_text(self.file(RUN_INFO), json.dumps(info, indent=1, default=str))
        paths.write_text(self.file(TOKENIZER), json.dumps(tokenizer.to_dict()))

    def record_execution(self, **info) -> None:
        """How this start executes (the peak FLOPs MFU is measured against and where it came from,
        the attention path and why), in run.json at the top level and in this start's entry."""
        if not self._writable() or not self.file(RUN_INFO).exists():
            return
        run_info = json.loads(self.file(RUN_INFO).read_text())
        run_info.update(info)
        if run_info.get("starts"):
            run_info["starts"][-1].update(info)
        paths.write_text(self.file(RUN_INFO), json.dumps(run_info, indent=1, default=str))

    def record_launch(self, info: dict) -> None:
        if self._writable():
            paths.write_text(self.file(LAUNCH_INFO), json.dumps(info, indent=1))

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop rows after the restored step so each step appears once."""
        if not self._writable() or not self.file(METRICS).exists():
            return
        rows = [r for r in self.read_metrics() if isinstance(r, dict) and r.get("step", 0) <= last_step]
        paths.write_text(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in rows))

    def write_sample(self, step: int, text: str) -> None:
        if self._writable():
            paths.write_text(self.file(SAMPLES) / f"step_{step}.txt", text)

    def write_json(self, name: str, data: dict) -> None:
        if self._writable():
            paths.write_text(self.file(name), json.dumps(data, indent=1, default=str))

    def metrics_log(self, tracker=None) -> MetricsLog:
        return MetricsLog(self, tracker)


def _short(tokenizer_dict: dict) -> str:
    text = json.dumps(tokenizer_dict, sort_keys=True)
    if len(text) < 80:
        return text
    return f"{tokenizer_dict.get('kind')} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"


class MetricsLog:
    """metrics.jsonl, TensorBoard and (when configured) Weights & Biases, written by process 0 only.

    Locally rows are appended and flushed as they come. Object stores cannot append: the rows are
    kept and metrics.jsonl is rewritten whole at each flush (checkpoint and eval steps, at most
    every FLUSH_S seconds otherwise, and at the end); TensorBoard writes to a local staging
    folder whose files are uploaded at the same points. Rows lost to a kill between flushes are
    after the last checkpoint, which resume truncates to anyway.
    """

    FLUSH_S = 30.0

    def __init__(self, run_dir: RunDir, tracker=None):
        import jax

        self.enabled = jax.process_index() == 0
        self.run_dir = run_dir
        self.tracker = tracker  # Weights & Biases (tracking.Wandb), or None
        self.remote = paths.is_remote(run_dir.path)
        self.tb = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        if self.remote:
            self.rows = run_dir.read_metrics()
            key = hashlib.sha256(os.fspath(run_dir.path).encode()).hexdigest()[:16]
            self.tb_dir = paths.cache_root() / "staging" / key / TENSORBOARD
            self.last_flush = time.monotonic()
        else:
            self.tb_dir = run_dir.file(TENSORBOARD)
            self.file = run_dir.file(METRICS).open("a")
        self.tb = SummaryWriter(os.fspath(self.tb_dir))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, row["step"])
        if self.tracker is not None:
            self.tracker.log(row)
        if self.remote:
            self.rows.append(row)
            if time.monotonic() - self.last_flush > self.FLUSH_S:
                self.flush()
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def flush(self) -> None:
        if not self.enabled or not self.remote:
            return
        paths.write_text(self.run_dir.file(METRICS), "".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb.flush()
        for rel in paths.files(self.tb_dir):
            paths.copy_file(self.tb_dir / rel, self.run_dir.file(TENSORBOARD) / rel)
        self.last_flush = time.monotonic()

    def close(self) -> None:
        """Best effort: a run that is already failing (a full disk) must report its own error,
        not one from closing its logs."""
        if not self.enabled:
            return
        try:
            self.flush()
            if not self.remote:
                self.file.close()
            self.tb.close()
        except OSError as e:
            print(f"WARNING: closing {self.run_dir.file(METRICS)} / {TENSORBOARD}: {e}", file=sys.stderr, flush=True)
