"""`gptjax bench`: how fast a config trains, compiles, generates and loads data, optionally beside
PyTorch running the same architecture, batch and optimizer in the same process.

Every time is a median over `repeats` blocks after a warm-up; with `vs_torch` the two frameworks
alternate block by block, so a machine that slows down mid-run slows both. Compile times are
measured with the persistent compilation cache off (a cache hit is not a compile).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from gptjax.config import ConfigError, TrainConfig
from gptjax.model import counting
from gptjax.runtime import hardware, sharding
from gptjax.tools import plan
from gptjax.training import trainer

SECTIONS = ("train", "compile", "memory", "generate", "data")


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    sections: tuple[str, ...] = SECTIONS
    repeats: int = 5  # timed blocks per measurement; the median is reported
    steps: int = 10  # train steps per block
    warmup: int = 3  # untimed steps first (compilation, allocator, caches)
    depths: tuple[int, ...] = ()  # compile-time depths; () = the config's depth and 4x it
    prompt: int = 32  # generation: prompt tokens per sequence
    new_tokens: int = 32  # generation: new tokens per sequence
    gen_batch: tuple[int, ...] = (1, 8)
    data_batches: int = 200
    vs_torch: bool = False
    nanogpt: str | None = None  # nanoGPT checkout whose model.py is the PyTorch side
    torch_threads: int | None = None  # default: the machine's cores, as XLA:CPU uses

    def __post_init__(self):
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ConfigError(f"--sections {','.join(unknown)}: not among {', '.join(SECTIONS)}")
        for name in ("repeats", "steps", "prompt", "new_tokens", "data_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} = {getattr(self, name)} must be >= 1")
        if self.warmup < 0 or any(d < 1 for d in self.depths) or any(b < 1 for b in self.gen_batch):
            raise ConfigError("--warmup must be >= 0, --depths and --gen-batch positive integers")


def _median_ms(blocks: list[float], per_block: int) -> float:
    return 1e3 * statistics.median(blocks) / per_block


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _JaxTrainer:
    """The real train step of `cfg` on its mesh, fed one fixed batch (data loading is timed apart)."""

    def __init__(self, cfg: TrainConfig):
        if cfg.finetune.lora is not None:
            raise ConfigError("gptjax bench measures full training; a LoRA config (finetune.lora) is not supported")
        mesh = sharding.make_mesh(cfg.mesh)
        self.tr = trainer.make_trainer(cfg, mesh)
        self.state = trainer.init_state(self.tr)
        self.step = trainer.make_train_step(self.tr)
        rows = np.random.default_rng(cfg.seed).integers(0, cfg.model.vocab_size,
                                                        (cfg.data.batch_size, cfg.resolved_seq_len + 1))
        self.batch = jax.device_put(rows.astype(np.int32), self.tr.batch_sharding)
        self.stop = jax.device_put(np.zeros((mesh.size,), np.float32), sharding.per_device(mesh))
        self.frozen = None

    def run(self, n: int) -> float:
        def go():
            metrics = None
            for _ in range(n):  # dispatched back to back, as the training loop does
                self.state, metrics = self.step(self.state, self.frozen, self.batch, self.stop)
            jax.block_until_ready(metrics)
        return _timed(go)


def measure_train(cfg: TrainConfig, opts: BenchOptions) -> dict:
    ours = _JaxTrainer(cfg)
    theirs = None
    if opts.vs_torch:
        from gptjax.tools import bench_torch

        theirs = bench_torch.TorchTrainer(cfg, nanogpt=opts.nanogpt, threads=opts.torch_threads)
    ours.run(opts.warmup)
    if theirs is not None:
        theirs.run(opts.warmup)
    blocks, torch_blocks = [], []
    for _ in range(opts.repeats):
        blocks.append(ours.run(opts.steps))
        if theirs is not None:
            torch_blocks.append(theirs.run(opts.steps))
    step_ms = _median_ms(blocks, opts.steps)
    tokens = cfg.data.batch_size * cfg.resolved_seq_len
    tokens_per_s = tokens / (step_ms / 1e3)
    peak = hardware.peak_flops(cfg.peak_flops, cfg.model.compute_dtype)
    flops = counting.flops_per_token(cfg.model, cfg.resolved_seq_len) * tokens_per_s
    out = {"step_ms": step_ms, "tokens_per_s": tokens_per_s, "model_flops_per_s": flops,
           "mfu": flops / (peak.per_device * ours.tr.mesh.size), "peak_flops": peak.to_dict(),
           "step_ms_blocks": [1e3 * b / opts.steps for b in blocks]}
    if theirs is not None:
        torch_ms = _median_ms(torch_blocks, opts.steps)
        out["torch"] = {**theirs.describe(), "step_ms": torch_ms,
                        "step_ms_blocks": [1e3 * b / opts.steps for b in torch_blocks]}
        out["torch_ms_over_gptjax_ms"] = torch_ms / step_ms  # > 1: gptjax is faster
    return out


def measure_compile(cfg: TrainConfig, opts: BenchOptions) -> list[dict]:
    """Seconds to lower and compile the train step from abstract inputs (nothing allocated), with
    scanned and unrolled layers at each depth."""
    depths = opts.depths or (cfg.model.n_layers, 4 * cfg.model.n_layers)
    rows = []
    for depth in depths:
        for scan in (True, False):
            c = dataclasses.replace(cfg, model=cfg.model.replace(n_layers=depth, scan_layers=scan))
            _, seconds = plan.compile_step(trainer.make_trainer(c, sharding.make_mesh(c.mesh)))
            rows.append({"n_layers": depth, "scan_layers": scan, "compile_s": seconds})
    return rows


def measure_memory(cfg: TrainConfig) -> list[dict]:
    """Per-device memory of the compiled train step without and with full remat (plan.py)."""
    rows = []
    for remat in ("none", "full"):
        p = plan.make_plan(dataclasses.replace(cfg, model=cfg.model.replace(remat=remat)))
        rows.append({"remat": remat, "peak_bytes": p.peak_bytes, "temp_bytes": p.temp_bytes,
                     "argument_bytes": p.argument_bytes})
    return rows


def measure_generate(cfg: TrainConfig, opts: BenchOptions) -> list[dict]:
    """Prefill, decode and whole-call speed of generation on the config's model (random weights),
    each timed on its own: prefill is the prompt's pass that fills the KV cache, decode a compiled
    loop of `new_tokens` one-token steps from that cache, the whole call gptjax.generate."""
    from gptjax import generation
    from gptjax.model.gpt import init_model

    m = cfg.model
    model = init_model(m, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for batch in opts.gen_batch:
        prompts = rng.integers(0, m.vocab_size, (batch, opts.prompt))
        prefill, decode = _decode_programs(model, prompts, opts.new_tokens)
        full = lambda: generation.generate(model, prompts.tolist(), opts.new_tokens, eos_token_id=None)  # noqa: E731
        start = prefill()
        full(), decode(start)  # compile each
        t_full, t_pre, t_dec = [], [], []
        for _ in range(opts.repeats):
            t_full.append(_timed(full))
            t_pre.append(_timed(prefill))
            t_dec.append(_timed(lambda: decode(start)))
        rows.append(generation_row(batch, opts, *(statistics.median(t) for t in (t_pre, t_dec, t_full))))
    return rows


def generation_row(batch: int, opts: BenchOptions, prefill_s: float, decode_s: float, full_s: float) -> dict:
    return {"batch": batch, "prompt": opts.prompt, "new_tokens": opts.new_tokens,
            "prefill_tokens_per_s": batch * opts.prompt / prefill_s,
            "decode_tokens_per_s": batch * opts.new_tokens / decode_s,
            "tokens_per_s": batch * opts.new_tokens / full_s}


def _decode_programs(model, prompts: np.ndarray, new_tokens: int):
    """(prefill, decode): prefill() runs the prompts into an empty cache; decode(start) runs
    `new_tokens` greedy one-token steps from its result, compiled as one loop, and returns the
    tokens it chose [batch, new_tokens] once they are ready."""
    import jax.numpy as jnp
    from flax import nnx

    from gptjax import generation
    from gptjax.model.gpt import KVCache
    from gptjax.runtime import xla

    batch, p = prompts.shape
    slots = -(-(p + new_tokens) // generation.PAD_MULTIPLE) * generation.PAD_MULTIPLE
    graphdef, params = nnx.split(model)
    weights = generation.decode_weights(model)
    positions = jnp.broadcast_to(jnp.arange(p), (batch, p))

    def fill(params, weights, tokens):
        return nnx.merge(graphdef, params).decode(tokens, positions, KVCache.empty(model.cfg, batch, slots),
                                                  weights=weights)

    def steps(params, weights, logits, cache):
        step_model = nnx.merge(graphdef, params)

        def body(i, carry):
            logits, cache, chosen = carry
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            logits, cache = step_model.decode(nxt[:, None], jnp.full((batch, 1), p + i), cache, weights=weights)
            return logits[:, 0], cache, chosen.at[:, i].set(nxt)

        chosen = jnp.zeros((batch, new_tokens), jnp.int32)
        return jax.lax.fori_loop(0, new_tokens, body, (logits, cache, chosen))[2]

    fill_c, steps_c, tokens = xla.jit(fill), xla.jit(steps), jnp.asarray(prompts, jnp.int32)

    def prefill():
        logits, cache = fill_c(params, weights, tokens)
        return jax.block_until_ready((logits[:, -1], cache))

    return prefill, lambda start: jax.block_until_ready(steps_c(params, weights, *start))


def measure_data(cfg: TrainConfig, opts: BenchOptions) -> dict:
    """Tokens/s of the training batches as the loop reads them (grain, reader threads)."""
    from gptjax.data import loader
    from gptjax.training import warm_start

    tokens = loader.load_tokens(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    batches = loader.TrainBatches(tokens.train, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed)
    n = opts.data_batches
    seconds = []
    for r in range(opts.repeats):
        it = batches.iterate(r * n * cfg.data.batch_size, n)
        seconds.append(_timed(lambda: [None for _ in it]))
    per_batch = cfg.data.batch_size * (cfg.resolved_seq_len + 1)
    return {"batches": n, "tokens_per_s": n * per_batch / statistics.median(seconds)}


def run(cfg: TrainConfig, opts: BenchOptions, say: Callable[[str], None] = print) -> dict:
    """Every requested section; a section that cannot run here records why instead of failing the rest."""
    result = {"config": cfg.name, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
              "device_kind": jax.devices()[0].device_kind, "batch_size": cfg.data.batch_size,
              "seq_len": cfg.resolved_seq_len, "params": counting.param_counts(cfg.model).total,
              "options": dataclasses.asdict(opts), "versions": _versions(opts)}
    steps = {"train": lambda: measure_train(cfg, opts), "compile": lambda: measure_compile(cfg, opts),
             "memory": lambda: measure_memory(cfg), "generate": lambda: measure_generate(cfg, opts),
             "data": lambda: measure_data(cfg, opts)}
    for name in opts.sections:
        say(f"bench: {name} ...")
        try:
            result[name] = steps[name]()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded: one unavailable part must not hide the others
            if name == "train":
                raise
            result[name] = {"skipped": f"{type(e).__name__}: {e}"}
    return result


def _versions(opts: BenchOptions) -> dict:
    import flax
    import optax

    out = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
    if opts.vs_torch:
        import torch

        out["torch"] = torch.__version__
    return out


def format_result(r: dict) -> str:
    lines = [f"{r['config']}: {r['params']:,} parameters, batch {r['batch_size']} x {r['seq_len']}, "
             f"{r['devices']} {r['platform']} device(s) ({r['device_kind']})"]
    t = r.get("train")
    if t:
        lines.append(f"train step   {t['step_ms']:9.2f} ms   {t['tokens_per_s']:12,.0f} tokens/s   "
                     f"MFU {t['mfu']:.1%} of {t['peak_flops']['per_device'] / 1e9:,.0f} GFLOP/s "
                     f"({t['peak_flops']['source']})")
        if "torch" in t:
            lines.append(f"  PyTorch ({t['torch']['implementation']}, {t['torch']['threads']} threads) "
                         f"{t['torch']['step_ms']:.2f} ms: PyTorch ms / gptjax ms = {t['torch_ms_over_gptjax_ms']:.2f}")
    for row in _rows(r, "compile"):
        lines.append(f"compile      {row['n_layers']:3d} layers {'scanned ' if row['scan_layers'] else 'unrolled'} "
                     f"{row['compile_s']:7.2f} s")
    for row in _rows(r, "memory"):
        lines.append(f"memory       remat={row['remat']:<4} peak {row['peak_bytes'] / 2**20:10.1f} MiB per device "
                     f"(temporaries {row['temp_bytes'] / 2**20:.1f})")
    for row in _rows(r, "generate"):
        lines.append(f"generate     batch {row['batch']:3d}: prefill {row['prefill_tokens_per_s']:10,.0f} tokens/s, "
                     f"decode {row['decode_tokens_per_s']:8,.1f} tokens/s")
    d = r.get("data")
    if d and "tokens_per_s" in d:
        lines.append(f"data loader  {d['tokens_per_s']:12,.0f} tokens/s")
    for name in SECTIONS:
        if isinstance(r.get(name), dict) and "skipped" in r[name]:
            lines.append(f"{name:<12} skipped: {r[name]['skipped']}")
    return "\n".join(lines)


def _rows(r: dict, name: str) -> list[dict]:
    value = r.get(name)
    return value if isinstance(value, list) else []
