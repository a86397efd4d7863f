"""The training loop: resume, and the cadence of logging, eval, checkpoints and signals.

The loop never waits on the device: step t is dispatched before step t-1's metrics are read,
and nothing else leaves the device except at eval and checkpoint steps. The run directory's
layout and I/O live in store/rundir.py; checkpoints in store/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tqdm
from flax import nnx

from gptjax import generation
from gptjax.config import ConfigError, EvalConfig, TrainConfig, fingerprint
from gptjax.data import loader
from gptjax.errors import Interrupted, RunStopped
from gptjax.finetune import sft
from gptjax.model import counting
from gptjax.runtime import distributed, hardware, sharding
from gptjax.store.lock import RunDirBusy, RunLock
from gptjax.store.rundir import RunDir
from gptjax.store.tensor_files import CheckpointError
from gptjax.training import fault_hooks, heldout, profiling, resume, signals, tracking, trainer, warm_start
from gptjax.training.signals import StopFlag
from gptjax.training.watchdog import Watchdog

log = logging.getLogger("gptjax")


@dataclasses.dataclass
class Progress:
    """Where a run stands: steps taken and what they consumed, summed over the steps actually
    taken with the batch in force for each (a resume with another batch size counts as it ran).
    `examples` is also the data position: the next batch starts at that example."""

    step: int = 0
    examples: int = 0
    tokens: int = 0
    flops: float = 0.0

    def advance(self, batch: int, seq_len: int, flops_per_token: float) -> None:
        self.step += 1
        self.examples += batch
        self.tokens += batch * seq_len
        self.flops += batch * seq_len * flops_per_token

    @classmethod
    def restored(cls, meta: dict) -> Progress:
        """From a checkpoint's meta. Checkpoints written before these counts were kept are taken to
        have run at the batch size of the config they were saved with."""
        if "progress" in meta:
            return cls(**meta["progress"])
        from gptjax.config import ModelConfig, from_dict

        step, saved = int(meta["step"]), meta["config"]
        batch, seq = saved["data"]["batch_size"], saved["data"]["seq_len"] or saved["model"]["max_seq_len"]
        per_token = counting.flops_per_token(from_dict(ModelConfig, saved["model"]), seq)
        return cls(step, step * batch, step * batch * seq, float(step * batch * seq * per_token))


@dataclasses.dataclass
class RunResult:
    progress: Progress
    resumed_from: int | None
    last_loss: float | None = None
    val_loss: float | None = None
    val_step: int | None = None  # the step val_loss was measured at
    stopped: str | None = None  # None: ran to the end; else why it stopped
    checkpoint_step: int | None = None  # the newest checkpoint when the run ended

    @property
    def final_step(self) -> int:
        return self.progress.step


class Feeds:
    """Host-to-device placement of this process's rows of the global batch and stop flags."""

    def __init__(self, tr: trainer.Trainer):
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


def evaluate(cfg: TrainConfig, tr, params, split, frozen=None) -> float:
    """Mean token loss over the whole validation split `split` (what each evaluation logs as val_loss)."""
    measured = heldout.HeldOut(dataclasses.replace(cfg, eval=EvalConfig()), tr, split, None)
    return measured.measure(params, frozen, tasks=False, interrupted=lambda: False)["val_loss"]


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run trains on beside its config: the objective (trainer.Objective), the tokenizer,
    `batches(batch_size, seed, rows)` (an object whose iterate(examples, steps) yields this
    process's `rows` of each global batch), the tokens one row holds (for the accounting), the
    validation split (None: no evaluation during training), whether every row's mask is plain
    causal, and whether the run ends with a sample."""

    objective: trainer.Objective
    tokenizer: Any
    batches: Callable
    tokens_per_row: int
    val: Any = None
    plain_causal: bool = True
    sample: bool = True


def language_model_job(cfg: TrainConfig) -> Job:
    """Pretraining on token files, or SFT on data.sft_files: next-token prediction."""
    objective = trainer.LanguageModel(cfg.finetune.lora)
    seq_len = cfg.resolved_seq_len
    if cfg.data.sft_files:
        data = _sft_data(cfg)
        batches = lambda b, seed, rows: sft.Batches(data.train, b, seed, rows)  # noqa: E731
        return Job(objective, data.tokenizer, batches, seq_len, data.val, plain_causal=False)
    tokens = loader.load_tokens(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    loader.check_vocab(tokens, cfg.model.vocab_size)
    loader.check_lengths(tokens, seq_len)
    batches = lambda b, seed, rows: loader.TrainBatches(tokens.train, seq_len, b, seed, rows)  # noqa: E731
    return Job(objective, tokens.tokenizer, batches, seq_len, tokens.val)


def _check_state_fits(cfg: TrainConfig, tr: trainer.Trainer) -> None:
    """Refuse, before anything is compiled or written, a run whose parameters, gradients and
    optimizer state alone exceed a device's memory (activations come on top: `gptjax plan`)."""
    capacity = hardware.device_capacity(sharding.device(tr.mesh))
    params = sharding.per_device_bytes(tr.abstract_state["params"])
    frozen = sharding.per_device_bytes(tr.abstract_frozen) if tr.abstract_frozen is not None else 0
    opt = sharding.per_device_bytes(tr.abstract_state["opt_state"])
    need = 2 * params + frozen + opt  # the gradients are the parameters' size
    if capacity is None or need <= capacity:
        return
    gib = 2**30
    mesh = ",".join(f"{k}={v}" for k, v in tr.mesh.shape.items())
    raise ConfigError(
        f"this run does not fit: per device its parameters ({params / gib:.2f} GiB), their gradients (as much) "
        f"{f'and frozen base ({frozen / gib:.2f} GiB) ' if frozen else ''}and optimizer state ({opt / gib:.2f} GiB) "
        f"need {need / gib:.2f} GiB before any activation, and a {sharding.device(tr.mesh).device_kind} device has "
        f"{capacity / gib:.2f} GiB. Split the state over more devices (mesh.fsdp), or choose a smaller model; "
        f"`gptjax plan CONFIG --mesh {mesh}` shows every figure.")


def train_run(cfg: TrainConfig, run_dir, *, progress: bool = True, on_eval=None, job: Job | None = None) -> RunResult:
    """Train (or resume) `cfg` in `run_dir`: language modelling, or `job`'s objective and batches
    (finetune/task_heads.py). Every input check, the comparison with the config the run was
    started with included, happens before anything is written or compiled.

    `on_eval(step, val_loss)` is called after each evaluation (hyperparameter search reports
    there; an exception it raises, such as a pruned trial, ends the run; its checkpoints stay).
    `progress`: a bar on a terminal; plain lines every log_every steps otherwise and with False."""
    with StopFlag():  # a signal at any moment of the run is heard (and handed on to the caller's flag)
        return _train_run(cfg, run_dir, progress, on_eval, job)


def _train_run(cfg: TrainConfig, run_dir, progress: bool, on_eval, job: Job | None) -> RunResult:
    if cfg.faults.kill_during == "start" and cfg.faults.kill_at_step == 0:
        fault_hooks.kill_now(cfg.faults.kill_signal)
    with Watchdog(cfg.watchdog, run_dir, say=_say) as dog:
        return _checked_run(cfg, run_dir, progress, on_eval, job, dog)


def _checked_run(cfg: TrainConfig, run_dir, progress: bool, on_eval, job: Job | None, dog: Watchdog) -> RunResult:
    rd = RunDir(run_dir)
    changes = resume.check(rd, cfg)
    if cfg.faults.fill_disk_at_step is not None:
        fault_hooks.fillable(run_dir)
    if cfg.init_from is not None:
        warm_start.check(cfg)
    job = language_model_job(cfg) if job is None else job
    rd.check_tokenizer(job.tokenizer)
    mesh = sharding.make_mesh(cfg.mesh)
    tr = trainer.make_trainer(cfg, mesh, job.objective)
    _check_state_fits(cfg, tr)
    # Eval files are read and checked here, before anything compiles.
    measured = heldout.HeldOut(cfg, tr, job.val, job.tokenizer) if job.val is not None else None
    if tr.abstract_frozen is not None:
        n_train, n_base = (sum(a.size for a in jax.tree.leaves(t)) for t in (tr.abstract_state["params"],
                                                                            tr.abstract_frozen))
        _say(f"LoRA: {n_train:,} trainable parameters beside {n_base:,} frozen ({n_train / n_base:.2%})")
    wandb_cfg = cfg.logging.wandb if jax.process_index() == 0 else None
    if wandb_cfg is not None:
        tracking.require_wandb()
    lock = _take_lock(rd)  # the one writer from here on; refused (exit 2) while another process trains here
    if lock is not None:
        dog.before_exit = lock.release  # a hung process gives the directory back before it ends
    ckpts = rd.checkpoints(cfg)
    tracker = None
    try:
        restored = ckpts.restore(tr.abstract_state)
        wall_before = 0.0
        base = warm_start.fingerprint(cfg.init_from) if cfg.finetune.lora is not None else None
        if restored is not None and base is not None and restored[1].get("base_fingerprint") != base:
            raise CheckpointError(f"{rd}: its LoRA adapters were trained on a base with fingerprint "
                                  f"{restored[1].get('base_fingerprint')}, but init_from = {cfg.init_from!r} now "
                                  f"has {base}; point init_from at the original base")
        frozen = None
        if base is not None:  # the frozen base: loaded at every start, never checkpointed
            frozen = warm_start.load_params(cfg, mesh, tr.frozen_shardings)
        pending_eval = None
        if restored is not None:
            state, meta = restored
            position = Progress.restored(meta)
            wall_before = float(meta.get("wall_time_s", 0.0))
            pending_eval = meta.get("pending_eval")
            _say(f"resumed from step {position.step}")
            if changes:
                _say("config changes recorded in config.{}.yaml: {}".format(
                    position.step, ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)))
        else:
            state, position = trainer.init_state(tr), Progress()
            if cfg.init_from is not None and frozen is None:
                _say(f"initialised from {cfg.init_from}")
        rd.record_start(cfg, job.tokenizer, position.step, changes)
        # An interrupted evaluation's row is written when it is measured again, and only then.
        rd.truncate_metrics(position.step - (pending_eval is not None))
        counts = counting.param_counts(cfg.model, cfg.resolved_seq_len)
        for line in tracking.startup_summary(cfg, counts, jax.device_count(), sharding.platform(mesh),
                                             dict(mesh.shape), position):
            _say(line)
        if wandb_cfg is not None:
            tracker = tracking.Wandb(cfg, run_dir, wandb_cfg)
        clock = _Clock(wall_before)
        result = RunResult(position, position.step if restored is not None else None)
        try:
            _loop(cfg, tr, state, frozen, base, job, measured, pending_eval, rd, ckpts, progress, on_eval, clock,
                  result, tracker, dog)
        except RunStopped as e:
            _finish(cfg, rd, clock, result, tracker, "diverged", error=str(e))
            raise
        _finish(cfg, rd, clock, result, tracker, "stopped" if result.stopped else "finished")
        return result
    finally:
        ckpts.close()
        if tracker is not None:
            tracker.close()  # a run ended by anything else (a pruned trial, an interrupt) still ends its W&B run
        if lock is not None:
            lock.release()


def _take_lock(rd: RunDir) -> RunLock | None:
    """Process 0 takes the run directory's lock (store/lock.py) and every process learns whether
    it did, so that the processes of a job refused as a second writer all stop before writing."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(rd.path).__enter__()
        except RunDirBusy as e:
            error = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None))) and error is None:
            error = f"{rd}: process 0 found another process training into this run directory (its log names it)"
    if error is not None:
        raise RunDirBusy(error)
    return lock


# The step's own metrics; any other the objective adds (task_loss, lm_loss) is logged as it is.
STEP_METRICS = ("loss", "lr", "grad_norm", "finite", "stop")


def _sft_data(cfg: TrainConfig) -> sft.SFTData:
    tokenizer = loader.make_tokenizer(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    if tokenizer is None:
        raise loader.DataError("data.sft_files are encoded with a tokenizer of the model: data.tokenizer = 'char' "
                             "builds a vocabulary from a corpus; use init_from's (the default with init_from) or "
                             "name one")
    out = sft.load(cfg.data, tokenizer, cfg.resolved_seq_len)
    top = max(int(out.train["tokens"].max()), int(out.val["tokens"].max()))
    if top >= cfg.model.vocab_size:
        raise loader.DataError(f"data.sft_files: token id {top} is beyond model.vocab_size = {cfg.model.vocab_size}")
    return out


class _Clock:
    """Wall time of the run over all its starts (checkpoints carry the time before this one)."""

    def __init__(self, before: float):
        self.before, self.t0 = before, time.time()

    def total(self) -> float:
        return self.before + time.time() - self.t0


def _finish(cfg: TrainConfig, rd: RunDir, clock: _Clock, result: RunResult, tracker, status: str,
            error: str | None = None) -> None:
    summary = _write_result(cfg, rd, clock, result, status, error)
    if tracker is not None:
        tracker.finish(summary, ["result.json", "config.yaml"])


def _write_result(cfg: TrainConfig, rd: RunDir, clock: _Clock, result: RunResult, status: str,
                  error: str | None = None) -> dict:
    """result.json: what a sweep collects from every run (see sweeps/report.py). tokens and flops
    are the sums over the steps actually taken (Progress), not steps x today's batch."""
    rows = rd.read_metrics()
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    counts = counting.param_counts(cfg.model, cfg.resolved_seq_len)
    p, wall = result.progress, clock.total()
    summary = {
        "status": status, "error": error, "final_val_loss": vals[-1] if vals else None,
        "best_val_loss": min(vals) if vals else None, "final_train_loss": rows[-1]["loss"] if rows else None,
        "steps": p.step, "examples": p.examples, "tokens": p.tokens, "params": counts.total,
        "non_embedding_params": counts.non_embedding, "flops_per_token": counts.flops_per_token, "flops": p.flops,
        "evals": heldout.evals_of(rows), "wall_time_s": wall, "tokens_per_sec": p.tokens / wall if wall > 0 else None,
        "seed": cfg.seed, "fingerprint": fingerprint(cfg)}
    rd.write_json("result.json", summary)
    return summary


def _loop(cfg, tr, state, frozen, base, job, measured, pending_eval, rd, ckpts, progress, on_eval, clock,
          result, tracker, dog) -> None:
    step_fn = trainer.make_train_step(tr)
    feeds = Feeds(tr)
    position = result.progress
    start, remaining = position.step, cfg.steps - position.step
    batches = job.batches(cfg.data.batch_size, cfg.seed, feeds.rows)
    flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len)
    peak_info = hardware.peak_flops(cfg.peak_flops, cfg.model.compute_dtype)
    # The train step's attention path, recorded; an explicit cudnn that cannot run is refused here.
    attn = tr.kernels.attention_for(plain_causal=job.plain_causal, dropout=cfg.model.attn_dropout > 0.0)
    rd.record_execution(peak_flops=peak_info.to_dict(), attention={"impl": attn.impl, "reason": attn.reason})
    peak = peak_info.per_device * jax.device_count()
    tokens_per_step = cfg.data.batch_size * job.tokens_per_row
    faults = cfg.faults
    metrics_log = rd.metrics_log(tracker)
    leader = jax.process_index() == 0
    bar_wanted = progress and leader and sys.stderr.isatty()
    bar = tqdm.tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, disable=not bar_wanted)
    lines = tracking.ProgressLines(cfg.steps, cfg.log_every, enabled=leader and not bar_wanted)
    profiler = profiling.StepProfiler(cfg.profile, rd.path, start, say=_say)
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
        dog.step_done(number, elapsed)
        tps = tokens_per_step / elapsed
        row = {"step": number, "loss": float(m["loss"]), "lr": float(m["lr"]),
               "grad_norm": float(m["grad_norm"]), "tokens_per_sec": tps, "mfu": flops * tps / peak,
               "tokens_seen": position.tokens - (position.step - number) * tokens_per_step,
               **{k: float(v) for k, v in m.items() if k not in STEP_METRICS}}  # the objective's own
        lines.step(row, elapsed)
        if not m["finite"]:
            if cfg.nan_policy == "stop":
                raise RunStopped(f"non-finite loss at step {number} (loss={row['loss']}, grad_norm="
                                 f"{row['grad_norm']}); stopping. The last good checkpoint is step "
                                 f"{ckpts.latest_step()}.")
            _say(f"non-finite loss at step {number}: update skipped (nan_policy=skip)")
        return row

    def emit(row, force=False):
        result.last_loss = row["loss"]
        if force or row["step"] % cfg.log_every == 0:
            metrics_log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}", refresh=False)

    def evaluate_into(row, stop) -> None:
        """The evaluation of row's step into row; raises errors.Interrupted on a stop signal."""
        number = row["step"]
        dog.phase("evaluation")
        on_batch = (lambda i: fault_hooks.kill_now(faults.kill_signal)) if faults.kills(number, "eval") else None
        row.update(measured.measure(state["params"], frozen, tasks=measured.tasks_due(number),
                                    interrupted=heldout.stop_check(stop), on_batch=on_batch))
        result.val_loss, result.val_step = row["val_loss"], number
        if leader:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k == "val_loss" or k.startswith("eval/"))
            (bar.write if bar_wanted else _say)(f"step {number}: loss {row['loss']:.4f}, {shown}")
        emit(row, force=True)
        if on_eval is not None:
            with jax.transfer_guard_device_to_host("allow"):
                on_eval(number, row["val_loss"])

    def save(number, pending_row=None):
        dog.phase("checkpoint save")
        if faults.fill_disk_at_step == number and leader:
            fault_hooks.fill_disk(rd.path)
        with jax.transfer_guard_device_to_host("allow"):  # Orbax copies to host
            ckpts.save(number, state, _meta(cfg, position, clock.total(), base, pending_row))
        metrics_log.flush()

    distributed.wait_for_peers("gptjax-train-loop")  # every process starts the loop together
    try:
        with StopFlag() as stop, jax.transfer_guard_device_to_host("disallow"):
            if pending_eval is not None and pending_eval["step"] == start:
                # A stop signal interrupted this checkpoint's evaluation: measure it now, whole.
                try:
                    evaluate_into(dict(pending_eval["row"]), stop)
                except Interrupted:
                    result.stopped = f"stopped by {stop.name or 'a signal on another process'} during the " \
                                     f"evaluation of step {start} (it runs again on resume)"
                    _say(result.stopped)
                    remaining = 0
            for rows in batches.iterate(position.examples, remaining):
                number = position.step + 1
                dog.training()
                if faults.hang_at_step == number:
                    fault_hooks.hang_once(rd.path)
                args = (state, frozen, feeds.batch(rows), feeds.stop_flags(stop.signal is not None))
                if mark is None:
                    distributed.compile_together(step_fn, *args, name="gptjax-train-step-compiled")
                with profiler.step(number, lambda: state):
                    state, device_metrics = step_fn(*args)
                position.advance(cfg.data.batch_size, job.tokens_per_row, flops)
                if faults.kills(number, "step"):
                    fault_hooks.kill_now(faults.kill_signal)  # the step is in flight, its metrics unread
                if mark is None:
                    mark = time.perf_counter()  # compiled and dispatched: time from here
                if pending is not None:
                    emit(read(pending))
                pending = (number, device_metrics)
                bar.update(1)
                is_last = number == cfg.steps
                eval_now = measured is not None and (number % cfg.eval_every == 0 or is_last
                                                     or measured.tasks_due(number))
                save_now = number % cfg.checkpoint_every == 0 or is_last or stop_requested
                if not (eval_now or save_now):
                    continue
                row = read(pending)  # this step's metrics: a NaN must stop us before saving
                pending = None
                if eval_now:
                    try:
                        evaluate_into(row, stop)
                    except Interrupted:
                        # Saved with the step's own metrics; the resumed run evaluates it whole.
                        save(number, pending_row=row)
                        name = stop.name or "a signal on another process"
                        result.stopped = f"stopped by {name} during the evaluation of step {number}"
                        _say(f"received {name} during the evaluation of step {number}: saved step {number}, exiting "
                             "(the evaluation runs again on resume)")
                        break
                else:
                    emit(row)
                save_now = save_now or stop_requested  # a signal may arrive during eval
                if save_now:
                    save(number)
                    if faults.kills(number, "save"):
                        fault_hooks.kill_now(faults.kill_signal)  # the save is still in flight
                mark = time.perf_counter()  # eval and saving are not training throughput
                bar.unpause()  # nor training time: the bar's rate and ETA leave them out
                if stop_requested:
                    name = stop.name or "a signal on another process"
                    result.stopped = f"stopped by {name}"
                    _say(f"received {name}: saved step {number}, exiting")
                    break
            if pending is not None:
                emit(read(pending))
        ckpts.wait()
        if faults.kills(position.step, "end"):
            fault_hooks.kill_now(faults.kill_signal)
    except RunStopped as e:
        result.stopped = str(e)
        _say(str(e))
        raise
    finally:
        profiler.close()
        bar.close()
        metrics_log.close()
        result.checkpoint_step = ckpts.latest_step()
    if result.stopped is None and signals.heard() is not None:
        _say(f"received {signals.heard()} after the last step was saved: finishing without the sample")
    elif result.stopped is None and cfg.sample_tokens > 0 and job.sample:
        with jax.transfer_guard_device_to_host("allow"):  # after the loop: not a training stall
            params = _host_params(jax.jit(tr.model_params)(state["params"], frozen))
            if leader:
                _write_sample(cfg, tr, params, job.tokenizer, rd, position.step)


def _meta(cfg: TrainConfig, position: Progress, wall_time_s: float, base: str | None = None,
          pending_row: dict | None = None) -> dict:
    # The data position (the next example) and the accounting are the run's own; the dropout RNG is
    # a function of (seed, step). A pending evaluation is one a stop signal interrupted.
    meta = {"step": position.step, "wall_time_s": wall_time_s, "progress": dataclasses.asdict(position),
            "data": {"seed": cfg.seed, "next_step": position.step, "next_example": position.examples},
            "rng": {"dropout_key": f"fold_in(key({cfg.seed}), step)"}, "config": cfg.to_dict()}
    if base is not None:  # LoRA checkpoints hold adapters only: name the base they belong to
        meta["base_fingerprint"] = base
    if pending_row is not None:
        meta["pending_eval"] = {"step": position.step, "row": pending_row}
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
    ids = generation.sample(model, prompt, cfg.sample_tokens, seed=cfg.seed)  # config.SAMPLE's settings
    rd.write_sample(step, tokenizer.decode(ids))


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
    log.info(message)
