"""Sweep files: a typed spec (grid, zip, random, IsoFLOP families, seeds) -> one validated
TrainConfig per run, each with a deterministic readable name.

    name: depth_width_shakespeare
    base: experiments/shakespeare_char.yaml   # a config file or a preset name
    overrides: {steps: 300}                   # applied to every run
    grid: {model.n_layers: [2, 4], model.d_model: [64, 128]}   # every combination
    zip: {optim.lr: [1e-3, 3e-4], optim.warmup_steps: [10, 20]}  # element-wise
    random: {samples: 8, seed: 0, params: {optim.lr: {distribution: log_uniform, low: 1e-4, high: 1e-2}}}
    isoflop: {budgets: [1e12, 3e12], sizes: [{model.n_layers: 2, model.d_model: 64}, ...]}
    head_dim: 16                              # width at fixed head size: n_heads = d_model / 16
    seeds: [0, 1]                             # every point once per seed

The kinds combine as a product: grid x zip x random x IsoFLOP x seeds. An IsoFLOP point turns its
budget C into steps: tokens D = C / flops_per_token (6N + attention, counting.py), steps =
D / (batch_size * seq_len). Every run's config is resolved and validated before anything starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
import random as random_lib
import re
from typing import Any, Literal

import yaml

from gptjax.config import ConfigError, TrainConfig, from_dict
from gptjax.config_files import load_train_config, load_yaml, resolve_path, resolve_paths
from gptjax.store import paths

DistributionKind = Literal["uniform", "log_uniform", "int_uniform", "choice"]


@dataclasses.dataclass(frozen=True)
class Distribution:
    distribution: DistributionKind = "uniform"
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None  # for choice

    def sample(self, rng: random_lib.Random) -> Any:
        if self.distribution == "choice":
            return self.values[rng.randrange(len(self.values))]
        if self.distribution == "log_uniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.distribution == "int_uniform":
            return rng.randint(int(self.low), int(self.high))
        return float(rng.uniform(self.low, self.high))

    def check(self, where: str) -> None:
        if self.distribution == "choice":
            if not self.values:
                raise ConfigError(f"{where}: distribution 'choice' needs a non-empty 'values' list")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError(f"{where}: distribution {self.distribution!r} needs low < high, got low = {self.low!r}, "
                              f"high = {self.high!r}")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ConfigError(f"{where}: log_uniform needs low > 0, got {self.low!r}")


@dataclasses.dataclass(frozen=True)
class RandomSearch:
    samples: int = 8
    seed: int = 0
    params: dict[str, Distribution] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IsoFlop:
    budgets: list[float] = dataclasses.field(default_factory=list)  # training FLOPs per run
    sizes: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # model override sets
    min_steps: int = 10  # smaller runs are dropped (their loss says nothing about the law)


@dataclasses.dataclass(frozen=True)
class Search:
    """Optuna search over `params` (TPE sampler, median pruning on logged validation losses)."""

    trials: int = 20
    params: dict[str, Distribution] = dataclasses.field(default_factory=dict)
    storage: str | None = None  # None: sqlite:///<sweep dir>/optuna.db; any RDB URL; or a journal file path
    pruning: bool = True
    startup_trials: int = 4  # trials before pruning starts
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    base: str = ""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    zip: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    random: RandomSearch | None = None
    isoflop: IsoFlop | None = None
    search: Search | None = None
    head_dim: int | None = None
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: tuple[str, ...]  # every override, in `section.field=value` form
    config: TrainConfig
    point: dict[str, Any]  # what varies across the sweep (seed excluded)
    seed: int
    budget: float | None = None


def load_sweep(path: str | pathlib.Path) -> SweepConfig:
    """A sweep file, its relative paths (base, data files in overrides, grid, zip and IsoFLOP
    sizes) resolved against the file's own directory (config_files.resolve_paths)."""
    path = paths.as_path(path)
    if not path.exists():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    data = load_yaml(path.read_text(), f"sweep file {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"sweep {path}: expected a mapping (name, base, grid, ...), got {type(data).__name__}")
    data.setdefault("name", path.stem)
    origin = None if paths.is_remote(path) else pathlib.Path(os.fspath(path)).parent
    sweep = from_dict(SweepConfig, _resolved(data, origin, str(path)))
    _check(sweep, path)
    return sweep


def _resolved(data: dict, origin: pathlib.Path | None, where: str) -> dict:
    out = dict(data)
    base = out.get("base")
    if isinstance(base, str) and ("/" in base or base.endswith((".yaml", ".yml"))):  # else a preset name
        out["base"] = resolve_path(base, origin, f"{where}: base")
    if isinstance(out.get("overrides"), dict):
        out["overrides"] = resolve_paths(out["overrides"], origin, where)
    for kind in ("grid", "zip"):
        if isinstance(out.get(kind), dict):
            out[kind] = {k: [resolve_paths(v, origin, where, k) for v in values] if isinstance(values, list) else values
                         for k, values in out[kind].items()}
    iso = out.get("isoflop")
    if isinstance(iso, dict) and isinstance(iso.get("sizes"), list):
        out["isoflop"] = {**iso, "sizes": [resolve_paths(s, origin, where) for s in iso["sizes"]]}
    return out


def _check(sweep: SweepConfig, where) -> None:
    if not sweep.base:
        raise ConfigError(f"sweep {where}: 'base' (a config file or preset name) is required")
    for key, values in {**sweep.grid, **sweep.zip}.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep {where}: {key} must be a non-empty list, got {values!r}")
    lengths = {k: len(v) for k, v in sweep.zip.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"sweep {where}: zip lists must have equal lengths, got {lengths}")
    both = set(sweep.grid) & set(sweep.zip)
    if both:
        raise ConfigError(f"sweep {where}: {sorted(both)} appear in both grid and zip")
    if sweep.random is not None:
        if sweep.random.samples < 1:
            raise ConfigError(f"sweep {where}: random.samples = {sweep.random.samples} must be >= 1")
        for key, dist in sweep.random.params.items():
            dist.check(f"sweep {where}: random.params.{key}")
    if sweep.search is not None:
        for key, dist in sweep.search.params.items():
            dist.check(f"sweep {where}: search.params.{key}")
    if sweep.isoflop is not None and (not sweep.isoflop.budgets or not sweep.isoflop.sizes):
        raise ConfigError(f"sweep {where}: isoflop needs non-empty 'budgets' and 'sizes'")
    if not sweep.seeds:
        raise ConfigError(f"sweep {where}: seeds must list at least one seed")


def _points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of grid, zip and random values (without IsoFLOP and seeds)."""
    grid = [dict(zip(sweep.grid, combo)) for combo in itertools.product(*sweep.grid.values())] or [{}]
    n_zip = len(next(iter(sweep.zip.values()))) if sweep.zip else 0
    zipped = [{k: v[i] for k, v in sweep.zip.items()} for i in range(n_zip)] or [{}]
    sampled = [{}]
    if sweep.random is not None:
        rng = random_lib.Random(sweep.random.seed)
        sampled = [{k: d.sample(rng) for k, d in sweep.random.params.items()} for _ in range(sweep.random.samples)]
    return [{**g, **z, **r} for g in grid for z in zipped for r in sampled]


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    if isinstance(v, (list, tuple)):
        return "+".join(map(_value_text, v))
    return str(v)


def run_name(point: dict[str, Any], seed: int, budget: float | None) -> str:
    """`C1e12-n_layers2-d_model64-seed0`: short keys (the last dotted part) and compact values."""
    parts = [f"C{_value_text(float(budget))}"] if budget is not None else []
    parts += [f"{k.rsplit('.', 1)[-1]}{_value_text(v)}" for k, v in point.items()]
    parts.append(f"seed{seed}")
    return re.sub(r"[^\w.+=-]+", "_", "-".join(parts))


def _as_override(key: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def expand(sweep: SweepConfig) -> list[Run]:
    """Every run of the sweep, resolved and validated (a bad member names itself)."""
    runs, names = [], set()
    budgets = [(b, size) for b in sweep.isoflop.budgets for size in sweep.isoflop.sizes] \
        if sweep.isoflop is not None else [(None, {})]
    for point in _points(sweep):
        for budget, size in budgets:
            for seed in sweep.seeds:
                run = _resolve(sweep, {**size, **point}, seed, budget)
                if run is None:
                    continue
                if run.name in names:
                    raise ConfigError(f"sweep {sweep.name}: two runs would both be named {run.name!r}; make the "
                                      "varied values distinct")
                names.add(run.name)
                runs.append(run)
    if not runs:
        raise ConfigError(f"sweep {sweep.name}: no runs (every IsoFLOP point is below isoflop.min_steps?)")
    return runs


def _resolve(sweep: SweepConfig, point: dict[str, Any], seed: int, budget: float | None) -> Run | None:
    name = run_name(point, seed, budget)
    values = {**sweep.overrides, **point, "seed": seed}
    try:
        if sweep.head_dim is not None:
            values.update(_heads(sweep, values))
        cfg = load_train_config(sweep.base, [_as_override(k, v) for k, v in values.items()])
        if budget is not None:
            steps = _steps_for(cfg, budget)
            if steps < sweep.isoflop.min_steps:
                return None
            values["steps"] = steps
            cfg = load_train_config(sweep.base, [_as_override(k, v) for k, v in values.items()])
        if cfg.logging.wandb is not None and cfg.logging.wandb.group is None:  # the sweep's runs are a group
            values["logging.wandb.group"] = sweep.name
            cfg = load_train_config(sweep.base, [_as_override(k, v) for k, v in values.items()])
    except ConfigError as e:
        raise ConfigError(f"sweep {sweep.name}, run {name}: {e}") from None
    overrides = tuple(_as_override(k, v) for k, v in values.items())
    return Run(name, overrides, cfg, point, seed, budget)


def _heads(sweep: SweepConfig, values: dict[str, Any]) -> dict[str, Any]:
    """Width at fixed head size, as scaling studies vary it: n_heads = d_model / head_dim."""
    d_model = values.get("model.d_model", load_train_config(sweep.base).model.d_model)
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
        raise ConfigError(f"model.d_model = {d_model!r} is invalid; accepted: a positive integer (a multiple of "
                          f"head_dim = {sweep.head_dim})")
    if d_model % sweep.head_dim:
        raise ConfigError(f"model.d_model = {d_model} is not a multiple of head_dim = {sweep.head_dim}")
    return {"model.n_heads": d_model // sweep.head_dim, "model.head_dim": None}


def _steps_for(cfg: TrainConfig, budget: float) -> int:
    from gptjax.model import counting

    tokens = budget / counting.flops_per_token(cfg.model, cfg.resolved_seq_len)
    return int(round(tokens / (cfg.data.batch_size * cfg.resolved_seq_len)))
