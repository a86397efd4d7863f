"""μP coordinate check (Yang et al. 2022, Tensor Programs V, §D.1; the `mup` package's
`get_coord_data`): train copies of one model at several widths for a few steps and record, at
every step, the typical size (mean |x|) of each layer's activations. Under μP the curves are flat
in width; under the standard parametrization they grow with it, the sign that the best learning
rate will drift as the model widens.

`gptjax sweep coord-check CONFIG --widths 64,128,256,512 --steps 10` writes a PNG and, with
--json, the numbers. Width is varied at fixed head size (n_heads = d_model / head_dim).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import TrainConfig
from gptjax.data import loader
from gptjax.model.attention import GLOBAL_WINDOW
from gptjax.runtime import sharding
from gptjax.training import trainer


def _at_width(cfg: TrainConfig, width: int, parametrization: str) -> TrainConfig:
    head_dim = cfg.model.resolved_head_dim
    model = cfg.model.replace(d_model=width, n_heads=max(width // head_dim, 1), head_dim=head_dim, d_ff=None,
                              parametrization=parametrization, scan_layers=False)
    return dataclasses.replace(cfg, model=model, mesh=dataclasses.replace(cfg.mesh, data=1, fsdp=1, tensor=1))


def activation_scales(model, rows_BxT) -> dict[str, float]:
    """mean |x| of the embedding output, each block's output and the logits (the coordinates)."""
    cfg = model.cfg
    positions = jnp.broadcast_to(jnp.arange(rows_BxT.shape[1]), rows_BxT.shape)
    x = model.embed(rows_BxT)
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)
    out = {"embedding": x}
    graphdef, state = nnx.split(model.blocks)
    for i, kind in enumerate(cfg.layer_kinds):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
        x = block(x, positions, cfg.local_window if kind == "local" else GLOBAL_WINDOW)
        out[f"block {i}"] = x
    out["logits"] = model.logits(rows_BxT)[..., : cfg.vocab_size]
    return {k: float(jnp.mean(jnp.abs(v))) for k, v in out.items()}


def coord_check(cfg: TrainConfig, widths: list[int], steps: int, parametrization: str, tokens: np.ndarray):
    """{width: [scales at step 0 (init), 1, ..., steps]}: each width trained with cfg's optimizer."""
    result = {}
    for width in widths:
        wcfg = _at_width(cfg, width, parametrization)
        mesh = sharding.make_mesh(wcfg.mesh, jax.devices()[:1])
        tr = trainer.make_trainer(wcfg, mesh)
        state, step = trainer.init_state(tr), trainer.make_train_step(tr)
        batches = loader.TrainBatches(tokens, wcfg.resolved_seq_len, wcfg.data.batch_size, wcfg.seed)
        # A fixed batch the model never trains on (example 10,000 batches in).
        probe = jnp.asarray(batches.at(10_000 * wcfg.data.batch_size)[:, :-1])
        no_stop = jax.device_put(np.zeros(1, np.float32), sharding.per_device(mesh))
        series = []
        for t in range(steps + 1):
            series.append(activation_scales(nnx.merge(tr.graphdef, state["params"]), probe))
            if t < steps:
                rows = batches.at(t * wcfg.data.batch_size)
                state, _ = step(state, None, jax.device_put(rows, tr.batch_sharding), no_stop)
        result[width] = series
    return result


def growth(result: dict, key: str, step: int) -> float:
    """Slope of log(mean |x|) against log(width) at `step`: about 0 when flat, > 0 when growing."""
    widths = sorted(result)
    scales = [result[w][step][key] for w in widths]
    return float(np.polyfit(np.log(widths), np.log(scales), 1)[0])


def plot(results: dict[str, dict], path: str, steps: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(next(iter(next(iter(results.values())).values()))[0])
    fig, axes = plt.subplots(len(results), len(keys), figsize=(2.6 * len(keys), 2.6 * len(results)), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        widths = sorted(result)
        for col, key in enumerate(keys):
            ax = axes[row][col]
            for t in steps:
                ax.plot(widths, [result[w][t][key] for w in widths], "o-", ms=3, label=f"t={t}")
            ax.set(xscale="log", yscale="log", title=f"{name}: {key}")
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
            ax.title.set_fontsize(8)
            if col == 0:
                ax.set_ylabel("mean |x|")
            if row == len(results) - 1:
                ax.set_xlabel("width")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: TrainConfig, widths: list[int], steps: int, png: str | None) -> dict:
    """Both parametrizations at every width; the growth of each coordinate at the last step."""
    tokens = loader.load_tokens(cfg.data).train
    results = {p: coord_check(cfg, widths, steps, p, tokens) for p in ("standard", "mup")}
    keys = list(results["standard"][widths[0]][0])
    summary = {"widths": widths, "steps": steps,
               "growth": {p: {k: growth(r, k, steps) for k in keys} for p, r in results.items()},
               "scales": {p: {str(w): r[w] for w in widths} for p, r in results.items()}}
    if png:
        plot(results, png, sorted({0, 1, steps // 2, steps}))
    return summary


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=1)
