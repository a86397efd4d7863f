"""The training run: run directory, resume, and the loop's cadence of logging, eval, checkpoints.

The loop never waits on the device: step t is dispatched before step t-1's metrics are read,
and nothing else leaves the device except at eval and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata as importlib_metadata

import draccus
import jax
import numpy as np
import tqdm
import yaml
from flax import nnx

from gptjax import checkpoint, counting, data, generate, sharding, train
from gptjax import tokenizer as tok_lib
from gptjax.checkpoint_io import write_text_atomic
from gptjax.config import TrainConfig, from_dict

log = logging.getLogger("gptjax")


class RunStopped(RuntimeError):
    """The run ended early for a reason the user must see (a non-finite loss)."""


@dataclasses.dataclass
class RunResult:
    final_step: int
    last_loss: float | None
    val_loss: float | None
    resumed_from: int | None
    stopped: str | None  # None: ran to the end; else why it stopped


def git_commit() -> str | None:
    """The commit of the gptjax checkout that is running, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def _versions() -> dict[str, str]:
    names = ("gptjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tiktoken", "numpy")
    out = {}
    for n in names:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[n] = importlib_metadata.version(n)
    return out


def prepare_run_dir(cfg: TrainConfig, run_dir: pathlib.Path, tokenizer) -> None:
    """config.yaml, run.json and tokenizer.json (process 0 only)."""
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", draccus.dump(cfg))
    info = {"git_commit": git_commit(), "versions": _versions(), "host": platform.node(),
            "python": platform.python_version(), "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count(),
            "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    write_text_atomic(run_dir / "run.json", json.dumps(info, indent=1))
    write_text_atomic(run_dir / "tokenizer.json", json.dumps(tokenizer.to_dict()))


def _truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """On resume, drop rows after the restored step so each step appears once."""
    if jax.process_index() != 0 or not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
    write_text_atomic(path, "".join(r + "\n" for r in keep))


class _StopFlag:
    """SIGTERM/SIGINT finish the current step, save and exit cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def peak_flops_per_device(configured: float | None) -> float:
    """The configured peak, or one measured by a matmul benchmark and cached per device kind."""
    if configured is not None:
        return configured
    kind = jax.local_devices()[0].device_kind
    cache = data.cache_root() / "peak_flops.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if kind not in known:
        known[kind] = _measure_matmul_flops()
        if jax.process_index() == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(known, indent=1))
    return known[kind]


def _measure_matmul_flops(n: int = 1024, reps: int = 5) -> float:
    import jax.numpy as jnp

    device = jax.local_devices()[0]
    dtype = jnp.float32 if device.platform == "cpu" else jnp.bfloat16
    a = jnp.ones((n, n), dtype, device=device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))


class _MetricsLog:
    """metrics.jsonl and TensorBoard, written by process 0 only."""

    def __init__(self, run_dir: pathlib.Path):
        self.enabled = jax.process_index() == 0
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.file = open(self.path, "a")
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def evaluate(cfg: TrainConfig, eval_step, params, tokens: np.ndarray, batch_sh, weight_sh) -> float:
    """Mean token loss over the whole split."""
    shard = data.Shard(jax.process_index(), jax.process_count())
    total, count = 0.0, 0.0
    for rows, weights in data.eval_batches(tokens, cfg.resolved_seq_len, cfg.eval_batch_size, shard):
        s, c = eval_step(params, to_global(rows, batch_sh), to_global(weights, weight_sh))
        with jax.transfer_guard_device_to_host("allow"):
            total, count = total + float(s), count + float(c)
    return total / count


def to_global(local: np.ndarray, sh) -> jax.Array:
    """The global batch from this process's rows (multi-host: each host holds a slice)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sh)
    return jax.make_array_from_process_local_data(sh, local)


def train_run(cfg: TrainConfig, run_dir: pathlib.Path, *, progress: bool = True) -> RunResult:
    """Train (or resume) `cfg` in `run_dir`. Every input check happens before compilation."""
    run_dir = pathlib.Path(run_dir)
    tokens = data.load_tokens(cfg.data)
    data.check_vocab(tokens, cfg.model.vocab_size)
    data.check_lengths(tokens, cfg.resolved_seq_len)
    mesh = sharding.make_mesh(cfg.mesh)
    tr = train.make_trainer(cfg, mesh)
    prepare_run_dir(cfg, run_dir, tokens.tokenizer)
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", cfg.keep_last, cfg.keep_every)
    restored = ckpts.restore(tr.abstract_state)
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        _say(f"resumed from step {start}")
    else:
        state, start = train.init_state(tr), 0
    _truncate_metrics(run_dir / "metrics.jsonl", start)
    try:
        return _loop(cfg, tr, state, start, tokens, run_dir, ckpts, progress, resumed=restored is not None)
    finally:
        ckpts.close()


def _loop(cfg, tr, state, start, tokens, run_dir, ckpts, progress, resumed) -> RunResult:
    step_fn, eval_fn = train.make_train_step(tr), train.make_eval_step(tr)
    weight_sh = sharding.batch_sharding(tr.mesh, 1)
    shard = data.Shard(jax.process_index(), jax.process_count())
    batches = data.TrainBatches(tokens.train, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed, shard)
    flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len)
    peak = peak_flops_per_device(cfg.peak_flops) * jax.device_count()
    tokens_per_step = cfg.data.batch_size * cfg.resolved_seq_len
    metrics_log = _MetricsLog(run_dir)
    bar = tqdm.tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True,
                    disable=not progress or jax.process_index() != 0)
    result = RunResult(start, None, None, start if resumed else None, None)
    pending = None  # (step number, device metrics) of the step whose results are not read yet
    mark = None  # wall time at which the last read step was known complete
    val_loss = None
    stop_requested = False  # agreed by all processes: read from the step's metrics
    local_rows = cfg.data.batch_size // jax.process_count()

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
                last = ckpts.latest_step()
                raise RunStopped(f"non-finite loss at step {number} (loss={row['loss']}, grad_norm="
                                 f"{row['grad_norm']}); stopping. The last good checkpoint is step {last}.")
            _say(f"non-finite loss at step {number}: update skipped (nan_policy=skip)")
        return row

    def emit(row, force=False):
        result.final_step, result.last_loss = row["step"], row["loss"]
        if force or row["step"] % cfg.log_every == 0:
            metrics_log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}", refresh=False)

    try:
        with _StopFlag() as stop, jax.transfer_guard_device_to_host("disallow"):
            for step, rows in zip(range(start, cfg.steps), batches.iterate(start, cfg.steps)):
                number = step + 1
                flags = np.full(local_rows, 1.0 if stop.signal is not None else 0.0, np.float32)
                state, device_metrics = step_fn(state, to_global(rows, tr.batch_sharding), to_global(flags, weight_sh))
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
                    val_loss = evaluate(cfg, eval_fn, state["params"], tokens.val, tr.batch_sharding, weight_sh)
                    row["val_loss"] = result.val_loss = val_loss
                    if jax.process_index() == 0:
                        bar.write(f"step {number}: loss {row['loss']:.4f}, val_loss {val_loss:.4f}")
                emit(row, force=eval_now)
                save_now = save_now or stop_requested  # a signal may arrive during eval
                if save_now:
                    with jax.transfer_guard_device_to_host("allow"):  # Orbax copies to host
                        ckpts.save(number, state, _meta(cfg, number))
                    if cfg.faults.kill_after_save_at_step == number:
                        os.kill(os.getpid(), signal.SIGKILL)  # the save is still in flight
                mark = time.perf_counter()  # eval and saving are not training throughput
                if stop_requested:
                    name = signal.Signals(stop.signal).name if stop.signal is not None else "a signal on another process"
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
    if result.stopped is None:
        with jax.transfer_guard_device_to_host("allow"):  # after the loop: not a training stall
            params = _host_params(state["params"])
            if jax.process_index() == 0:
                _write_sample(cfg, tr, params, tokens.tokenizer, run_dir, result.final_step)
    return result


def _meta(cfg: TrainConfig, step: int) -> dict:
    # The data position and RNG are functions of (seed, step); both are stored for the record.
    return {"step": step, "data": {"seed": cfg.seed, "next_step": step},
            "rng": {"dropout_key": f"fold_in(key({cfg.seed}), step)"}, "config": cfg.to_dict()}


def _host_params(params):
    """Parameters as host arrays; with several processes each holds only shards, so gather
    (a collective: every process must call this)."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def _write_sample(cfg, tr, params, tokenizer, run_dir, step) -> None:
    model = nnx.merge(tr.graphdef, params)
    prompt = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    ids = generate.sample(model, prompt, cfg.sample_tokens, temperature=0.8, top_k=200, seed=cfg.seed)
    text = tokenizer.decode(ids)
    (run_dir / "samples").mkdir(exist_ok=True)
    write_text_atomic(run_dir / "samples" / f"step_{step}.txt", text)


def load_run_model(run_dir: pathlib.Path):
    """(model, tokenizer) from a run directory's config and latest good checkpoint, on one device."""
    run_dir = pathlib.Path(run_dir)
    cfg = load_run_config(run_dir)
    mesh = sharding.make_mesh(dataclasses.replace(cfg.mesh, data=1, fsdp=1, tensor=1), jax.devices()[:1])
    tr = train.make_trainer(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=1),
                                                optim=dataclasses.replace(cfg.optim, grad_accum=1),
                                                eval_batch_size=1), mesh)
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", cfg.keep_last, cfg.keep_every)
    try:
        restored = ckpts.restore(tr.abstract_state)
    finally:
        ckpts.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"{run_dir / 'checkpoints'} holds no checkpoint yet")
    tokenizer = tok_lib.from_dict(json.loads((run_dir / "tokenizer.json").read_text()))
    return nnx.merge(tr.graphdef, restored[0]["params"]), tokenizer


def load_run_config(run_dir: pathlib.Path) -> TrainConfig:
    path = pathlib.Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.yaml")
    return from_dict(TrainConfig, yaml.safe_load(path.read_text()))


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
    log.info(message)
