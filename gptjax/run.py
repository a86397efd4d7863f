"""The training loop: resume, and the cadence of logging, eval, checkpoints and signals.

The loop never waits on the device: step t is dispatched before step t-1's metrics are read,
and nothing else leaves the device except at eval and checkpoint steps. The run directory's
layout and I/O live in rundir.py; checkpoints in checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from gptjax import attention, counting, data, distributed, generation, hardware, init_from, sft, sharding, train
from gptjax.checkpoint_io import CheckpointError
from gptjax.config import TrainConfig
from gptjax.errors import RunStopped
from gptjax.rundir import RunDir
from gptjax.signals import StopFlag

log = logging.getLogger("gptjax")


@dataclasses.dataclass
class RunResult:
    final_step: int
    last_loss: float | None
    val_loss: float | None
    resumed_from: int | None
    stopped: str | None  # None: ran to the end; else why it stopped


class Feeds:
    """Host-to-device placement of this process's rows of the global batch and stop flags."""

    def __init__(self, tr: train.Trainer):
        self.tr, self.batch_size = tr, tr.cfg.data.batch_size
        self.rows = sharding.local_rows(tr.batch_sharding, self.batch_size)
        self.flag_sharding = sharding.per_device(tr.mesh)
        self.flag_rows = sharding.local_rows(self.flag_sharding, tr.mesh.size)

    def batch(self, local):
        """A token array, or supervised rows (a dict of arrays, sft.py)."""
        return jax.tree.map(lambda x: sharding.global_array(x, self.rows, self.tr.batch_sharding, self.batch_size),
                            local)

    def stop_flags(self, stopping: bool) -> jax.Array:
        local = np.full(len(self.flag_rows), 1.0 if stopping else 0.0, np.float32)
        return sharding.global_array(local, self.flag_rows, self.flag_sharding, self.tr.mesh.size)


def evaluate(cfg: TrainConfig, eval_step, params, tokens: np.ndarray, tr, on_batch=None, frozen=None) -> float:
    """Mean token loss over the whole split."""
    weight_sh = sharding.batch_sharding(tr.mesh, 1)
    b = cfg.eval_batch_size
    rows = sharding.local_rows(tr.batch_sharding, b)
    total, count = 0.0, 0.0
    source = sft.eval_batches(tokens, b, rows) if isinstance(tokens, dict) else \
        data.eval_batches(tokens, cfg.resolved_seq_len, b, rows)
    for i, (batch, weights) in enumerate(source):
        batch = jax.tree.map(lambda x: sharding.global_array(x, rows, tr.batch_sharding, b), batch)
        s, c = eval_step(params, frozen, batch,
                         sharding.global_array(weights, rows, weight_sh, b))
        with jax.transfer_guard_device_to_host("allow"):
            total, count = total + float(s), count + float(c)
        if on_batch is not None:
            on_batch(i)
    return total / count


def train_run(cfg: TrainConfig, run_dir, *, progress: bool = True, on_eval=None) -> RunResult:
    """Train (or resume) `cfg` in `run_dir`. Every input check, the comparison with the config
    the run was started with included, happens before anything is written or compiled.

    `on_eval(step, val_loss)` is called after each evaluation (hyperparameter search reports
    there; an exception it raises, such as a pruned trial, ends the run; its checkpoints stay)."""
    rd = RunDir(run_dir)
    changes = rd.check_resume(cfg)
    if cfg.init_from is not None:
        init_from.check(cfg)
    if cfg.data.sft_files:
        tokens = _sft_data(cfg)
    else:
        tokens = data.load_tokens(cfg.data, cfg.init_from)
        data.check_vocab(tokens, cfg.model.vocab_size)
        data.check_lengths(tokens, cfg.resolved_seq_len)
    rd.check_tokenizer(tokens.tokenizer)
    mesh = sharding.make_mesh(cfg.mesh)
    tr = train.make_trainer(cfg, mesh)
    if tr.abstract_frozen is not None:
        n_train, n_base = (sum(a.size for a in jax.tree.leaves(t)) for t in (tr.abstract_state["params"],
                                                                            tr.abstract_frozen))
        _say(f"LoRA: {n_train:,} trainable parameters beside {n_base:,} frozen ({n_train / n_base:.2%})")
    ckpts = rd.checkpoints(cfg)
    try:
        restored = ckpts.restore(tr.abstract_state)
        wall_before = 0.0
        base = init_from.fingerprint(cfg.init_from) if cfg.finetune.lora is not None else None
        if restored is not None and base is not None and restored[1].get("base_fingerprint") != base:
            raise CheckpointError(f"{rd}: its LoRA adapters were trained on a base with fingerprint "
                                  f"{restored[1].get('base_fingerprint')}, but init_from = {cfg.init_from!r} now "
                                  f"has {base}; point init_from at the original base")
        frozen = None
        if base is not None:  # the frozen base: loaded at every start, never checkpointed
            frozen = init_from.load_params(cfg, mesh, tr.frozen_shardings)
        if restored is not None:
            state, meta = restored
            start = int(meta["step"])
            wall_before = float(meta.get("wall_time_s", 0.0))
            _say(f"resumed from step {start}")
            if changes:
                _say("config changes recorded in config.{}.yaml: {}".format(
                    start, ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)))
        elif cfg.init_from is not None and frozen is None:
            params = init_from.load_params(cfg, mesh, tr.state_shardings["params"])
            state, start = train.state_from_params(tr, params), 0
            _say(f"initialised from {cfg.init_from}")
        else:
            state, start = train.init_state(tr), 0
        rd.record_start(cfg, tokens.tokenizer, start, changes)
        rd.truncate_metrics(start)
        clock = _Clock(wall_before)
        try:
            result = _loop(cfg, tr, state, frozen, base, start, tokens, rd, ckpts, progress, restored is not None,
                           on_eval, clock)
        except RunStopped as e:
            _write_result(cfg, rd, clock, "diverged", error=str(e))
            raise
        _write_result(cfg, rd, clock, "stopped" if result.stopped else "finished")
        return result
    finally:
        ckpts.close()


def _sft_data(cfg: TrainConfig) -> sft.SFTData:
    tokenizer = data.make_tokenizer(cfg.data, cfg.init_from)
    if tokenizer is None:
        raise data.DataError("data.sft_files are encoded with a tokenizer of the model: data.tokenizer = 'char' "
                             "builds a vocabulary from a corpus; use init_from's (the default with init_from) or "
                             "name one")
    out = sft.load(cfg.data, tokenizer, cfg.resolved_seq_len)
    top = max(int(out.train["tokens"].max()), int(out.val["tokens"].max()))
    if top >= cfg.model.vocab_size:
        raise data.DataError(f"data.sft_files: token id {top} is beyond model.vocab_size = {cfg.model.vocab_size}")
    return out


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Clock:
    """Wall time of the run over all its starts (checkpoints carry the time before this one)."""

    def __init__(self, before: float):
        self.before, self.t0 = before, time.time()

    def total(self) -> float:
        return self.before + time.time() - self.t0


def _write_result(cfg: TrainConfig, rd: RunDir, clock: _Clock, status: str, error: str | None = None) -> None:
    """result.json: what a sweep collects from every run (see sweeps/report.py)."""
    rows = rd.read_metrics()
    steps = max((r["step"] for r in rows), default=0)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    counts = counting.param_counts(cfg.model, cfg.resolved_seq_len)
    tokens = steps * cfg.data.batch_size * cfg.resolved_seq_len
    wall = clock.total()
    rd.write_json("result.json", {
        "status": status, "error": error, "final_val_loss": vals[-1] if vals else None,
        "best_val_loss": min(vals) if vals else None, "final_train_loss": rows[-1]["loss"] if rows else None,
        "steps": steps, "tokens": tokens, "params": counts.total, "non_embedding_params": counts.non_embedding,
        "flops_per_token": counts.flops_per_token, "flops": counts.flops_per_token * tokens,
        "wall_time_s": wall, "tokens_per_sec": tokens / wall if wall > 0 else None, "seed": cfg.seed})


def _loop(cfg, tr, state, frozen, base, start, tokens, rd, ckpts, progress, resumed, on_eval, clock) -> RunResult:
    step_fn, eval_fn = train.make_train_step(tr), train.make_eval_step(tr)
    feeds = Feeds(tr)
    if isinstance(tokens, sft.SFTData):
        batches = sft.Batches(tokens.train, cfg.data.batch_size, cfg.seed, feeds.rows)
    else:
        batches = data.TrainBatches(tokens.train, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed, feeds.rows)
    flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len)
    peak_info = hardware.peak_flops(cfg.peak_flops, cfg.model.compute_dtype)
    # The train step's attention path, recorded; an explicit cudnn that cannot run is refused here.
    attn = attention.choose_here(cfg.model, aligned=not isinstance(tokens, sft.SFTData),
                                 needs_dropout=cfg.model.attn_dropout > 0.0)
    rd.record_execution(peak_flops=peak_info.to_dict(), attention={"impl": attn.impl, "reason": attn.reason})
    peak = peak_info.per_device * jax.device_count()
    tokens_per_step = cfg.data.batch_size * cfg.resolved_seq_len
    faults = cfg.faults
    metrics_log = rd.metrics_log()
    bar = tqdm.tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True,
                    disable=not progress or jax.process_index() != 0)
    result = RunResult(start, None, None, start if resumed else None, None)
    pending = None  # (step number, device metrics) of the step whose results are not read yet
    mark = None  # wall time at which the last read step was known complete
    stop_requested = False  # agreed by all processes: read from the step's metrics

    def read(pending):
        """Fetch a finished step's metrics (the one allowed device-to-host transfer per step)."""
        nonlocal mark, stop_requested
        number, device_metrics = pending
        with jax.transfer_guard_device_to_host("allow"):
            m = jax.device_get(device_metrics)
        stop_requested = stop_requested or bool(m["stop"])
        now = time.perf_counter()
        elapsed, mark = now - mark, now
        tps = tokens_per_step / elapsed
        row = {"step": number, "loss": float(m["loss"]), "lr": float(m["lr"]),
               "grad_norm": float(m["grad_norm"]), "tokens_per_sec": tps, "mfu": flops * tps / peak}
        if not m["finite"]:
            if cfg.nan_policy == "stop":
                raise RunStopped(f"non-finite loss at step {number} (loss={row['loss']}, grad_norm="
                                 f"{row['grad_norm']}); stopping. The last good checkpoint is step "
                                 f"{ckpts.latest_step()}.")
            _say(f"non-finite loss at step {number}: update skipped (nan_policy=skip)")
        return row

    def emit(row, force=False):
        result.final_step, result.last_loss = row["step"], row["loss"]
        if force or row["step"] % cfg.log_every == 0:
            metrics_log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}", refresh=False)

    distributed.wait_for_peers("gptjax-train-loop")  # every process compiles the step from here
    try:
        with StopFlag() as stop, jax.transfer_guard_device_to_host("disallow"):
            for step, rows in zip(range(start, cfg.steps), batches.iterate(start, cfg.steps)):
                number = step + 1
                state, device_metrics = step_fn(state, frozen, feeds.batch(rows),
                                                feeds.stop_flags(stop.signal is not None))
                if faults.kills(number, "step"):
                    _kill_now()  # the step is in flight, its metrics unread
                if mark is None:
                    mark = time.perf_counter()  # compiled and dispatched: time from here
                if pending is not None:
                    emit(read(pending))
                pending = (number, device_metrics)
                bar.update(1)
                is_last = number == cfg.steps
                eval_now = number % cfg.eval_every == 0 or is_last
                save_now = number % cfg.checkpoint_every == 0 or is_last or stop_requested
                if not (eval_now or save_now):
                    continue
                row = read(pending)  # this step's metrics: a NaN must stop us before saving
                pending = None
                if eval_now:
                    kill = faults.kills(number, "eval")
                    row["val_loss"] = result.val_loss = evaluate(
                        cfg, eval_fn, state["params"], tokens.val, tr,
                        on_batch=(lambda i: _kill_now()) if kill else None, frozen=frozen)
                    if jax.process_index() == 0:
                        bar.write(f"step {number}: loss {row['loss']:.4f}, val_loss {row['val_loss']:.4f}")
                emit(row, force=eval_now)
                if eval_now and on_eval is not None:
                    with jax.transfer_guard_device_to_host("allow"):
                        on_eval(number, row["val_loss"])
                save_now = save_now or stop_requested  # a signal may arrive during eval
                if save_now:
                    with jax.transfer_guard_device_to_host("allow"):  # Orbax copies to host
                        ckpts.save(number, state, _meta(cfg, number, clock.total(), base))
                    if faults.kills(number, "save"):
                        _kill_now()  # the save is still in flight
                    metrics_log.flush()
                mark = time.perf_counter()  # eval and saving are not training throughput
                if stop_requested:
                    name = stop.name or "a signal on another process"
                    result.stopped = f"stopped by {name}"
                    _say(f"received {name}: saved step {number}, exiting")
                    break
            if pending is not None:
                emit(read(pending))
        ckpts.wait()
    except RunStopped as e:
        result.stopped = str(e)
        _say(str(e))
        raise
    finally:
        bar.close()
        metrics_log.close()
    if result.stopped is None and cfg.sample_tokens > 0:
        with jax.transfer_guard_device_to_host("allow"):  # after the loop: not a training stall
            params = state["params"] if frozen is None else jax.jit(tr.full_params)(state["params"], frozen)
            params = _host_params(params)
            if jax.process_index() == 0:
                _write_sample(cfg, tr, params, tokens.tokenizer, rd, result.final_step)
    return result


def _meta(cfg: TrainConfig, step: int, wall_time_s: float, base: str | None = None) -> dict:
    # The data position and RNG are functions of (seed, step); both are stored for the record.
    meta = {"step": step, "wall_time_s": wall_time_s, "data": {"seed": cfg.seed, "next_step": step},
            "rng": {"dropout_key": f"fold_in(key({cfg.seed}), step)"}, "config": cfg.to_dict()}
    if base is not None:  # LoRA checkpoints hold adapters only: name the base they belong to
        meta["base_fingerprint"] = base
    return meta


def _host_params(params):
    """Parameters as host arrays; with several processes each holds only shards, so gather
    (a collective: every process must call this)."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def _write_sample(cfg, tr, params, tokenizer, rd: RunDir, step) -> None:
    model = nnx.merge(tr.graphdef, params)
    prompt = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    ids = generation.sample(model, prompt, cfg.sample_tokens, temperature=0.8, top_k=200, seed=cfg.seed)
    rd.write_sample(step, tokenizer.decode(ids))


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
    log.info(message)
