"""Scaling-law fits to (params, tokens, loss) points: Chinchilla approaches 2 and 3, power laws.

Conventions:

- N is `params`, D is `tokens`, C = 6·N·D training FLOPs (Kaplan et al. 2020; Hoffmann et al.
  2022, "Chinchilla"). A CSV may give `flops` instead of `tokens`; then D = flops / (6·N).
- Approach 3 (`fit_chinchilla`) fits L(N, D) = E + A/N^alpha + B/D^beta exactly as Hoffmann et
  al., appendix D.2: with A = exp(a), B = exp(b), E = exp(e) it minimises
      sum_i Huber_delta( LSE(a - alpha·log N_i, b - beta·log D_i, e) - log L_i ),  delta = 1e-3,
  by L-BFGS from a grid of initialisations, keeping the best. `fit_power` is the same machinery
  with one term: L(x) = E + A/x^alpha (loss against N, or the L(C) frontier with x = C).
- Approach 2 (`fit_isoflop`): per compute budget a parabola in log N, its minimum N_opt(C), and
  the power laws N_opt ∝ C^a, D_opt ∝ C^b.
- Everywhere in this file `a` and `b` are the compute-optimal exponents (N_opt ∝ C^a,
  D_opt ∝ C^b; approach 3 gives a = beta/(alpha+beta), b = alpha/(alpha+beta)); the paper's
  log coefficients a, b, e live only in the vector `theta` (and as log_a, log_b, log_e).
- Residuals are log(predicted) - log(measured), the quantity the objective penalises.
- Intervals are 2.5/97.5 percentiles over bootstrap refits on points resampled with replacement.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import optimize, special
from threadpoolctl import threadpool_limits

from gptjax.config import ConfigError

Law = Literal["chinchilla", "power"]
LAWS: tuple[Law, ...] = ("chinchilla", "power")
N_FREE_PARAMETERS: dict[Law, int] = {"chinchilla": 5, "power": 3}
ACCEPTED_COLUMNS = (
    "columns params, tokens, loss or params, flops, loss (then tokens = flops / (6 * params)); "
    "other columns are kept"
)
DEFAULT_DELTA = 1e-3  # Hoffmann et al. (2022), appendix D.2
DEFAULT_STARTS = 16
# The paper's grid of initialisations (appendix D.2). theta is laid out as
# (a_1..a_k, alpha_1..alpha_k, e): one (log coefficient, exponent) pair per input column.
_GRID_EXPONENT = (0.0, 0.5, 1.0, 1.5, 2.0)
_GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_GRID_LOG_COEFFICIENT = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


class FitError(ConfigError):
    """Points or options a fit cannot use; the message names the source, value and what is accepted."""


# --- reading and checking points ---------------------------------------------------------------


def read_points(path: str | os.PathLike, *, law: Law | None = None, metric: str = "loss") -> pd.DataFrame:
    """Points from a CSV (`tokens` wins over `flops` when both are given); `law` also checks the
    count; `metric` names the column fitted as the loss (`gptjax sweep analyze` writes one column
    per recorded metric, e.g. eval/gutenberg/bpb)."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise FitError(f"{path}: cannot read a CSV of points ({err}); expected {ACCEPTED_COLUMNS}") from err
    if metric != "loss":
        if metric not in df.columns:
            columns = ", ".join(map(str, df.columns))
            raise FitError(f"{path}: no column {metric!r} to fit (--metric); columns: {columns}")
        df = df.assign(loss=df[metric]).dropna(subset=["loss"])
    df = _with_tokens(df, str(path))
    checked = check_points(df, str(path))
    if law is not None:
        _check_count(len(checked), law, str(path))
    return checked


def _with_tokens(df: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in ("params", "loss") if c not in df.columns]
    if "tokens" not in df.columns and "flops" not in df.columns:
        missing.append("tokens (or flops)")
    if missing:
        raise FitError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}; "
            f"accepted: {ACCEPTED_COLUMNS}"
        )
    if "tokens" in df.columns:
        return df
    params = _positive_column(df, "params", source)
    flops = _positive_column(df, "flops", source)
    return df.assign(tokens=flops / (6.0 * params))  # the 6·N·D convention


def check_points(df: pd.DataFrame, source: str = "points") -> pd.DataFrame:
    """`df` with params, tokens, loss as positive finite floats, or a FitError naming the bad row."""
    missing = [c for c in ("params", "tokens", "loss") if c not in df.columns]
    if missing:
        raise FitError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}; "
            f"accepted: {ACCEPTED_COLUMNS}"
        )
    if len(df) == 0:
        raise FitError(f"{source}: no data rows; a fit needs at least {min(N_FREE_PARAMETERS.values())} points")
    columns = {c: _positive_column(df, c, source) for c in ("params", "tokens", "loss")}
    return df.assign(**columns)


def _positive_column(df: pd.DataFrame, column: str, source: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
        i = int(bad[0])
        seen = df[column].iloc[i]
        seen = seen.item() if isinstance(seen, np.generic) else seen  # 0, not np.int64(0)
        raise FitError(
            f"{source}: {column} = {seen!r} in data row {i + 1} (header not counted) "
            f"is not a positive finite number; {bad.size} such row(s) in {column}; "
            "params, tokens, flops and loss must all be > 0 and finite"
        )
    return values


def _check_count(n: int, law: Law, source: str, exclude_worst: int = 0) -> None:
    need = N_FREE_PARAMETERS[law]
    if n - exclude_worst < need:
        dropped = f" after excluding the {exclude_worst} worst" if exclude_worst else ""
        raise FitError(
            f"{source}: {n} point(s){dropped} leave {n - exclude_worst} to fit the {law} law, "
            f"which has {need} free parameters; need at least {need}"
        )


def _check_options(delta: float, exclude_worst: int, bootstrap: int, starts: int) -> None:
    if not (isinstance(delta, (int, float)) and np.isfinite(delta) and delta > 0):
        raise FitError(f"delta = {delta!r} is invalid: must be a positive finite Huber threshold (paper: 1e-3)")
    _check_integer("exclude_worst", exclude_worst, 0)
    _check_integer("bootstrap", bootstrap, 0)
    _check_integer("starts", starts, 1)


def _check_integer(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise FitError(f"{name} = {value!r} is invalid: must be an integer >= {low}")


def _labels(df: pd.DataFrame) -> list[str | int]:
    """Row names for reports: the `name` column when there is one, else the frame's index."""
    if "name" in df.columns:
        return [str(v) for v in df["name"]]
    return [int(i) if isinstance(i, (int, np.integer)) else str(i) for i in df.index]


# --- the Huber-on-LSE machinery shared by every parametric law ----------------------------------


def _log_predict(theta_SxP: np.ndarray, logx_NxK: np.ndarray) -> np.ndarray:
    """log L for S parameter vectors at N points: LSE over the k power terms and e."""
    k = logx_NxK.shape[1]
    terms_SxNxK = theta_SxP[:, None, :k] - theta_SxP[:, None, k : 2 * k] * logx_NxK[None]
    e_SxNx1 = np.broadcast_to(theta_SxP[:, None, -1:], terms_SxNxK.shape[:2] + (1,))
    return special.logsumexp(np.concatenate([terms_SxNxK, e_SxNx1], axis=-1), axis=-1)


def _objective(
    theta: np.ndarray, logx_NxK: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log residuals, divided by delta², and its analytic gradient.

    The division leaves the minimiser unchanged but keeps the objective O(1) per point when the
    residuals are near delta. L-BFGS-B's stopping test is relative to max(|f|, 1), so on exact
    data the raw objective (~1e-9) stops early: 5e-6 relative error in the parameters at scipy's
    default tolerances, against 1e-11 for the rescaled one.
    """
    k = logx_NxK.shape[1]
    terms = np.empty((logx_NxK.shape[0], k + 1))
    terms[:, :k] = theta[:k] - theta[k : 2 * k] * logx_NxK
    terms[:, k] = theta[-1]
    top = terms.max(axis=1)
    weights = np.exp(terms - top[:, None])  # softmax of the terms: d LSE / d term
    total = weights.sum(axis=1)
    weights /= total[:, None]
    residual = top + np.log(total) - log_loss
    slope_w = np.clip(residual, -delta, delta)[:, None] * weights  # Huber'(r) · d LSE / d term
    grad = np.concatenate([slope_w[:, :k].sum(0), -(slope_w[:, :k] * logx_NxK).sum(0), slope_w[:, k:].sum(0)])
    return special.huber(delta, residual).sum() / delta**2, grad / delta**2


def _grid(k: int) -> np.ndarray:
    """The paper's initialisations for k power terms, shape (6^k · 5^k · 5, 2k + 1)."""
    rows = itertools.product(*[_GRID_LOG_COEFFICIENT] * k, *[_GRID_EXPONENT] * k, _GRID_E)
    return np.array(list(rows), dtype=float)


def _minimise(theta0: np.ndarray, logx: np.ndarray, log_loss: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    result = optimize.minimize(
        _objective,
        theta0,
        args=(logx, log_loss, delta),
        jac=True,
        method="L-BFGS-B",  # unbounded, as in the paper; L-BFGS-B is scipy's L-BFGS
        options={"maxiter": 2000},
    )
    return result.x, float(result.fun)


def _fit_from_grid(logx: np.ndarray, log_loss: np.ndarray, delta: float, starts: int) -> np.ndarray:
    """Best L-BFGS optimum over the `starts` grid points with the lowest initial objective.

    The grid's initial objective is ranked in one vectorised pass, and only the best `starts`
    run L-BFGS. On 64 points of the Chinchilla law with 0.5% and 1% noise, the 16 best reach the
    optimum of all 4,500 starts to 1e-7 relative in every parameter, in 0.3 s instead of 30 s.
    """
    grid = _grid(logx.shape[1])
    initial = special.huber(delta, _log_predict(grid, logx) - log_loss[None]).sum(axis=1)
    best_theta, best_f = grid[0], np.inf
    for i in np.argsort(initial, kind="stable")[:starts]:
        theta, f = _minimise(grid[i], logx, log_loss, delta)
        if f < best_f:
            best_theta, best_f = theta, f
    return best_theta


@dataclasses.dataclass(frozen=True)
class _Solution:
    theta: np.ndarray  # (a_1..a_k, alpha_1..alpha_k, e) of the final fit
    kept: np.ndarray  # bool per point: used by the final fit
    residuals: np.ndarray  # log predicted - log measured at every point, excluded ones included
    objective: float  # the paper's objective (sum of Huber) over kept points, not rescaled
    bootstrap_SxP: np.ndarray  # one theta per bootstrap refit, shape (bootstrap, P)


def _solve(
    logx: np.ndarray, log_loss: np.ndarray, *, delta: float, exclude_worst: int, bootstrap: int, seed: int, starts: int
) -> _Solution:
    """Fit, optionally drop the worst points and refit, optionally bootstrap the final fit."""
    # L-BFGS-B's BLAS calls are on 5-vectors: OpenBLAS handing them to a thread pool made each
    # fit 8x slower (2.4 s against 0.3 s, measured on 2 cores), so the pool is held to one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        kept = np.ones(len(log_loss), dtype=bool)
        theta = _fit_from_grid(logx, log_loss, delta, starts)
        if exclude_worst:
            # Robustness against diverged or broken runs: a point far off the law has a large
            # residual under the first fit; it is dropped and the law refitted once without it.
            first = np.abs(_log_predict(theta[None], logx)[0] - log_loss)
            kept[np.argsort(-first, kind="stable")[:exclude_worst]] = False
            theta = _fit_from_grid(logx[kept], log_loss[kept], delta, starts)
        residuals = _log_predict(theta[None], logx)[0] - log_loss
        boot = _bootstrap(theta, logx[kept], log_loss[kept], delta, bootstrap, seed)
    objective = float(special.huber(delta, residuals[kept]).sum())
    return _Solution(theta=theta, kept=kept, residuals=residuals, objective=objective, bootstrap_SxP=boot)


def _bootstrap(
    theta: np.ndarray, logx: np.ndarray, log_loss: np.ndarray, delta: float, n: int, seed: int
) -> np.ndarray:
    """Refits on resampled points, each started from the full-data optimum.

    A resample's objective is a small perturbation of the full one, so its optimum lies in the
    same basin; rerunning the grid per resample would multiply the cost by `starts`.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, theta.size))
    for j in range(n):
        idx = rng.integers(0, len(log_loss), size=len(log_loss))
        out[j], _ = _minimise(theta, logx[idx], log_loss[idx], delta)
    return out


def _intervals(samples: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """2.5/97.5 percentile interval per named quantity; empty when there are no samples."""
    return {
        name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for name, v in samples.items() if len(v)
    }


# --- diagnostics: when a fit cannot be trusted ----------------------------------------------------

POINTS_PER_PARAMETER = 3  # approach 3 with fewer points per free parameter is refused unless forced
THETA_NAMES: dict[Law, tuple[str, ...]] = {"chinchilla": ("log_A", "log_B", "alpha", "beta", "log_E"),
                                           "power": ("log_A", "alpha", "log_E")}
FLAT_CONDITION = 1e6  # condition number of the scaled Jacobian above which a direction is flat
POOR_LOG_SE = 1.0  # a log coefficient known only to a factor e or worse
POOR_RELATIVE_SE = 0.5  # an exponent whose standard error is half its value or more
MIN_R2 = 0.8  # below this share of explained variance the noise is as large as the effect
MAX_SEED_RATIO = 2.0  # residuals larger than this many seed-noise standard deviations: a misfit
E_AT_BOUND = 1e-3  # E below this fraction of the smallest loss sits at its lower bound, 0


@dataclasses.dataclass(frozen=True)
class _Checked:
    intervals: dict[str, tuple[float, float]]  # clipped to the valid region
    warnings: tuple[str, ...]
    diagnostics: dict[str, Any]


def _check_identifiable_count(n: int, law: Law, force: bool) -> str | None:
    """Refuse approach 3 on fewer than POINTS_PER_PARAMETER points per free parameter (unless
    forced); returns the warning a forced or a power fit carries, or None."""
    need = POINTS_PER_PARAMETER * N_FREE_PARAMETERS[law]
    if n >= need:
        return None
    free = N_FREE_PARAMETERS[law]
    text = (f"{n} points for the {law} law's {free} free parameters ({n / free:.1f} per parameter, fewer than "
            f"{POINTS_PER_PARAMETER}): the fit can pass through noise, and its parameters and intervals mean little; "
            f"{need} or more points are needed")
    if not force:
        raise FitError(f"{text}. Add runs, fit --law power (3 parameters), or give --force to fit anyway with warnings")
    return text


def _jacobian(theta: np.ndarray, logx: np.ndarray) -> np.ndarray:
    """d log L / d theta at each point, shape (N, P): softmax weights of the LSE's terms."""
    k = logx.shape[1]
    terms = np.concatenate([theta[:k] - theta[k:2 * k] * logx, np.full((len(logx), 1), theta[-1])], axis=1)
    w = np.exp(terms - terms.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return np.concatenate([w[:, :k], -w[:, :k] * logx, w[:, k:]], axis=1)


def _valid(name: str, v: np.ndarray, floor: float) -> np.ndarray:
    """Which values of a reported quantity lie in the law's valid region."""
    if name in ("alpha", "beta"):
        return v > 0
    if name in ("a", "b"):
        return (v > 0) & (v < 1)
    if name == "E":
        return v >= floor
    return np.isfinite(v) & (v > 0)  # A, B


def _region(name: str) -> tuple[str, float, float]:
    return {"alpha": ("alpha > 0", 0.0, np.inf), "beta": ("beta > 0", 0.0, np.inf),
            "a": ("0 < a < 1", 0.0, 1.0), "b": ("0 < b < 1", 0.0, 1.0), "E": ("E >= 0", 0.0, np.inf)}.get(
        name, (f"{name} > 0", 0.0, np.inf))


def _diagnose(law: Law, solution: _Solution, logx: np.ndarray, log_loss: np.ndarray, values, shortfall) -> _Checked:
    """Diagnostics of a fitted law, warnings first (see docs/scaling.md)."""
    warnings = [shortfall] if shortfall else []
    kept, theta = solution.kept, solution.theta
    lx, ll = logx[kept], log_loss[kept]
    names = THETA_NAMES[law]
    point = {k: float(v[0]) for k, v in values(theta[None]).items()}
    floor = E_AT_BOUND * float(np.exp(ll.min()))
    # The valid region at the optimum.
    e_at_bound = point["E"] < floor
    if e_at_bound:
        warnings.append(f"E = {point['E']:.3g} sits at its lower bound 0: these points lie too far above the "
                        "irreducible loss to measure it, so A and alpha absorb it and extrapolations carry that "
                        "uncertainty")
    for name in ("alpha", "beta"):
        if name in point and point[name] <= 0:
            grows = "N" if name == "alpha" else "D"
            warnings.append(f"{name} = {point[name]:.3g} <= 0: the loss does not fall as {grows} grows in these "
                            "points, so the law does not describe them")
    # Identifiability: the Gauss-Newton view of the fit around its optimum.
    J = _jacobian(theta, lx)
    scaled = J / np.maximum(np.linalg.norm(J, axis=0), 1e-300)
    _, s, vt = np.linalg.svd(scaled, full_matrices=False)
    condition = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    residual = solution.residuals[kept]
    dof = max(len(ll) - len(theta), 1)
    sigma2 = float(np.sum(residual**2) / dof)
    cov = sigma2 * np.linalg.pinv(J.T @ J)
    se = {n: float(np.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)}
    if condition > FLAT_CONDITION:
        weak = [names[i].removeprefix("log_") for i in np.argsort(-np.abs(vt[-1]))[:3] if abs(vt[-1][i]) > 0.2]
        warnings.append(f"the points do not determine {', '.join(weak)} separately (a flat direction of the fit: "
                        f"condition number {condition:.3g}); vary the inputs those terms depend on")
    else:
        for name, err in se.items():
            if name == "log_E" and e_at_bound:
                continue  # said above
            poor = err > POOR_LOG_SE if name.startswith("log_") else err > POOR_RELATIVE_SE * abs(point[name])
            if poor:
                shown = name.removeprefix("log_")
                detail = f"log {shown} has standard error {err:.2g} (a factor {np.exp(min(err, 700)):.3g})" \
                    if name.startswith("log_") else f"{shown} = {point[name]:.3g} has standard error {err:.2g}"
                warnings.append(f"{shown} is poorly determined by these points: {detail}")
    total = float(np.sum((ll - ll.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan")
    if not r2 >= MIN_R2:
        warnings.append(f"the law explains {max(r2, 0.0):.0%} of the variance of log loss (R² = {r2:.3g}): the noise "
                        "is as large as the effect, so its parameters mean little")
    seed = _seed_noise(lx, ll)
    ratio = None
    if seed is not None:
        noise, spread = seed
        ratio = float(np.sqrt(np.mean(residual**2)) / noise) if noise > 0 else float("inf")
        if ratio > MAX_SEED_RATIO:
            warnings.append(f"residuals (RMS {np.sqrt(np.mean(residual**2)):.3g} in log loss) are {ratio:.1f}x the "
                            f"seed noise ({noise:.3g}): the law's form misses these points by more than run-to-run "
                            "noise explains")
        if noise >= 0.5 * spread:
            warnings.append(f"seed noise ({noise:.3g} in log loss) is comparable to the differences between points "
                            f"({spread:.3g}): more seeds or a wider range are needed")
    intervals, clipped = _checked_intervals(values(solution.bootstrap_SxP), floor, e_at_bound, warnings)
    diagnostics = {
        "points": int(kept.sum()), "free_parameters": len(theta),
        "points_per_parameter": float(kept.sum()) / len(theta),
        "condition_number": condition, "standard_errors": se, "r2": r2,
        "seed_noise": None if seed is None else seed[0], "residual_over_seed_noise": ratio,
        "e_at_bound": bool(e_at_bound), "clipped_intervals": clipped,
    }
    return _Checked(intervals, tuple(warnings), diagnostics)


def _seed_noise(logx: np.ndarray, log_loss: np.ndarray) -> tuple[float, float] | None:
    """(pooled standard deviation of log loss between runs at the same inputs, standard deviation
    of the means of those inputs), or None when no inputs repeat (no seeds to compare with)."""
    keys = [tuple(np.round(row, 9)) for row in logx]
    groups: dict[tuple, list[float]] = {}
    for key, value in zip(keys, log_loss):
        groups.setdefault(key, []).append(float(value))
    repeated = [g for g in groups.values() if len(g) > 1]
    if not repeated:
        return None
    within = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in repeated)
    dof = sum(len(g) - 1 for g in repeated)
    means = [float(np.mean(g)) for g in groups.values()]
    return float(np.sqrt(within / dof)), float(np.std(means)) if len(means) > 1 else 0.0


def _checked_intervals(samples: Mapping[str, np.ndarray], floor: float, e_at_bound: bool, warnings: list[str]):
    """Percentile intervals clipped to each quantity's valid region; a clipped one is flagged."""
    raw = _intervals(samples)
    out, clipped = {}, {}
    for name, (lo, hi) in raw.items():
        v = samples[name]
        bad = float(np.mean(~_valid(name, v, floor)))
        text, low, high = _region(name)
        if name == "E" and bad > 0 and not e_at_bound:  # at its bound already at the optimum: said
            warnings.append(f"E sits at its lower bound 0 in {bad:.0%} of the {len(v)} bootstrap refits: the "
                            "irreducible loss is not identified")
        if lo < low or hi > high:
            new = (min(max(lo, low), high), min(max(hi, low), high))
            clipped[name] = {"raw": [lo, hi], "reported": list(new), "outside_share": bad}
            warnings.append(f"the 95% interval of {name} [{lo:.3g}, {hi:.3g}] leaves the valid region ({text}; "
                            f"{bad:.0%} of {len(v)} bootstrap refits fall outside): reported clipped to "
                            f"[{new[0]:.3g}, {new[1]:.3g}]")
            out[name] = new
        else:
            out[name] = (lo, hi)
    return out, clipped


# --- fitted laws --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LawFit:
    """What every parametric fit reports besides its parameters."""

    intervals: Mapping[str, tuple[float, float]]  # name -> (2.5%, 97.5%); empty without bootstrap
    residuals: tuple[float, ...]  # per input point, excluded ones included
    residual_rms: float  # over the points the final fit used
    n_points: int  # points the final fit used
    excluded: tuple[str | int, ...]  # names (or row indices) of points dropped by exclude_worst
    objective: float  # the paper's objective at the optimum (sum of Huber over used points)
    delta: float
    bootstrap: int  # number of bootstrap refits behind `intervals`
    warnings: tuple[str, ...] = ()  # plain sentences: why this fit may not be trusted (Diagnostics)
    diagnostics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The bootstrap refits' parameters by name (arrays), for prediction intervals; not reported.
    samples: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def predict_interval(self, *inputs) -> tuple[np.ndarray, np.ndarray] | None:
        """2.5/97.5 percentiles of the bootstrap refits' predictions at `inputs` (None without bootstrap)."""
        if not self.samples or not len(next(iter(self.samples.values()))):
            return None
        draws = [dataclasses.replace(self, **{k: float(v[j]) for k, v in self.samples.items()
                                              if k in self._parameter_names()}).predict(*inputs)
                 for j in range(len(next(iter(self.samples.values()))))]
        return np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)

    def _parameter_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if f.name in ("E", "A", "B", "alpha", "beta"))

    def _common(self) -> dict[str, Any]:
        return {
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "n_points": self.n_points,
            "excluded": list(self.excluded),
            "residual_rms": self.residual_rms,
            "residuals": list(self.residuals),
            "objective": self.objective,
            "delta": self.delta,
            "bootstrap": self.bootstrap,
            "warnings": list(self.warnings),
            "diagnostics": dict(self.diagnostics),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChinchillaFit(_LawFit):
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @property
    def a(self) -> float:
        """Compute-optimal exponent of N: N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Compute-optimal exponent of D: D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def predict(self, params, tokens):
        """Loss at N = params, D = tokens (arrays broadcast)."""
        n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def to_dict(self) -> dict[str, Any]:
        values = {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}
        return {"law": "chinchilla", **values, "a": self.a, "b": self.b, **self._common()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerFit(_LawFit):
    """L(x) = E + A/x^alpha."""

    E: float
    A: float
    alpha: float

    def predict(self, x):
        return self.E + self.A / np.asarray(x, dtype=float) ** self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {"law": "power", "E": self.E, "A": self.A, "alpha": self.alpha, **self._common()}


def _chinchilla_values(theta_SxP: np.ndarray) -> dict[str, np.ndarray]:
    log_a, log_b, alpha, beta, log_e = theta_SxP.T
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a refit run off to infinity says so
        return _chinchilla_dict(log_a, log_b, alpha, beta, log_e)


def _chinchilla_dict(log_a, log_b, alpha, beta, log_e) -> dict[str, np.ndarray]:
    return {
        "E": np.exp(log_e),
        "A": np.exp(log_a),
        "B": np.exp(log_b),
        "alpha": alpha,
        "beta": beta,
        "a": beta / (alpha + beta),
        "b": alpha / (alpha + beta),
    }


def _power_values(theta_SxP: np.ndarray) -> dict[str, np.ndarray]:
    log_a, alpha, log_e = theta_SxP.T
    with np.errstate(over="ignore"):
        return {"E": np.exp(log_e), "A": np.exp(log_a), "alpha": alpha}


def _report_fields(solution: _Solution, labels: Sequence[str | int], values, delta: float,
                   checked: _Checked) -> dict[str, Any]:
    used = solution.residuals[solution.kept]
    return {
        "samples": values(solution.bootstrap_SxP),
        "intervals": checked.intervals,
        "warnings": checked.warnings,
        "diagnostics": checked.diagnostics,
        "residuals": tuple(float(r) for r in solution.residuals),
        "residual_rms": float(np.sqrt(np.mean(used**2))),
        "n_points": int(solution.kept.sum()),
        "excluded": tuple(labels[i] for i in np.flatnonzero(~solution.kept)),
        "objective": solution.objective,
        "delta": float(delta),
        "bootstrap": len(solution.bootstrap_SxP),
    }


def fit_chinchilla(
    df: pd.DataFrame,
    *,
    delta: float = DEFAULT_DELTA,
    exclude_worst: int = 0,
    bootstrap: int = 0,
    seed: int = 0,
    starts: int = DEFAULT_STARTS,
    force: bool = False,
) -> ChinchillaFit:
    """Approach 3 of Hoffmann et al. (2022) on columns params, tokens, loss.

    exclude_worst: after a first fit drop this many points with the largest |log residual|
    (diverged or broken runs) and refit. bootstrap: refits on resampled points for intervals.
    starts: how many of the paper's 4,500 grid initialisations, best-ranked first, run L-BFGS.
    force: fit even with fewer than POINTS_PER_PARAMETER points per free parameter (warned).
    """
    _check_options(delta, exclude_worst, bootstrap, starts)
    df = check_points(df)
    _check_count(len(df), "chinchilla", "points", exclude_worst)
    shortfall = _check_identifiable_count(len(df) - exclude_worst, "chinchilla", force)
    logx = np.log(np.stack([df["params"].to_numpy(), df["tokens"].to_numpy()], axis=1))
    options = {"delta": delta, "exclude_worst": exclude_worst, "bootstrap": bootstrap, "seed": seed, "starts": starts}
    log_loss = np.log(df["loss"].to_numpy())
    solution = _solve(logx, log_loss, **options)
    point = {k: float(v[0]) for k, v in _chinchilla_values(solution.theta[None]).items() if k not in ("a", "b")}
    checked = _diagnose("chinchilla", solution, logx, log_loss, _chinchilla_values, shortfall)
    return ChinchillaFit(**point, **_report_fields(solution, _labels(df), _chinchilla_values, delta, checked))


def fit_power(
    x,
    loss,
    *,
    delta: float = DEFAULT_DELTA,
    exclude_worst: int = 0,
    bootstrap: int = 0,
    seed: int = 0,
    starts: int = DEFAULT_STARTS,
    labels: Sequence[str | int] | None = None,
    force: bool = False,
) -> PowerFit:
    """L(x) = E + A/x^alpha by the same Huber-on-log objective and grid as `fit_chinchilla`;
    too few points per parameter are warned of, not refused (`force` is accepted for symmetry)."""
    _check_options(delta, exclude_worst, bootstrap, starts)
    if np.size(x) != np.size(loss):
        raise FitError(f"fit_power: x has {np.size(x)} values but loss has {np.size(loss)}; they must match")
    frame = pd.DataFrame({"x": np.ravel(x), "loss": np.ravel(loss)})
    for column in ("x", "loss"):
        _positive_column(frame, column, "fit_power")
    _check_count(len(frame), "power", "fit_power", exclude_worst)
    shortfall = _check_identifiable_count(len(frame) - exclude_worst, "power", True)
    options = {"delta": delta, "exclude_worst": exclude_worst, "bootstrap": bootstrap, "seed": seed, "starts": starts}
    logx, log_loss = np.log(frame[["x"]].to_numpy()), np.log(frame["loss"].to_numpy())
    solution = _solve(logx, log_loss, **options)
    point = {k: float(v[0]) for k, v in _power_values(solution.theta[None]).items()}
    names = list(range(len(frame))) if labels is None else list(labels)
    checked = _diagnose("power", solution, logx, log_loss, _power_values, shortfall)
    return PowerFit(**point, **_report_fields(solution, names, _power_values, delta, checked))


def compute_optimal(fit: ChinchillaFit, flops):
    """(N_opt, D_opt) minimising fit.predict under C = 6·N·D (Hoffmann et al. 2022, eq. 4).

    Setting dL/dN = 0 along D = C/(6N) gives alpha·A·N^-alpha = beta·B·D^-beta, hence
    N_opt = G·(C/6)^a and D_opt = (C/6)/N_opt = G^-1·(C/6)^b with G = (alpha·A / (beta·B))^(1/(alpha+beta)).
    """
    half = np.asarray(flops, dtype=float) / 6.0
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / (fit.alpha + fit.beta))
    n_opt = g * half**fit.a
    return n_opt, half / n_opt


# --- approach 2: IsoFLOP parabolas --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IsoFlopBudget:
    """One compute budget's parabola loss = c2·(ln N)² + c1·ln N + c0 and its minimum."""

    budget: str
    flops: float  # geometric mean of 6·N·D over the budget's rows (what was actually spent)
    n_points: int
    coefficients: tuple[float, float, float]  # (c2, c1, c0), numpy.polyfit order
    n_opt: float
    d_opt: float  # flops / (6 n_opt)
    loss_opt: float
    interior: bool  # n_opt lies within the sampled N: False means the minimum is extrapolated

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "coefficients": list(self.coefficients)}


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    """ln N_opt = a·ln C + n_intercept and ln D_opt = b·ln C + d_intercept over the budgets."""

    budgets: tuple[IsoFlopBudget, ...]
    skipped: tuple[tuple[str, str], ...]  # (budget, why it was not used)
    a: float
    b: float
    n_intercept: float
    d_intercept: float
    intervals: Mapping[str, tuple[float, float]]  # "a", "b" over budgets resampled; empty without bootstrap
    bootstrap: int  # resamples behind `intervals` (draws with a single distinct budget are redrawn)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": "isoflop",
            "warnings": list(self.warnings),
            "a": self.a,
            "b": self.b,
            "n_intercept": self.n_intercept,
            "d_intercept": self.d_intercept,
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "bootstrap": self.bootstrap,
            "budgets": [b.to_dict() for b in self.budgets],
            "skipped": [{"budget": name, "reason": why} for name, why in self.skipped],
        }


def _budget_groups(df: pd.DataFrame, budget_column: str) -> pd.Series:
    if budget_column in df.columns:
        return df[budget_column].map(budget_name)
    # Runs of one budget spend 6·N·D only approximately (token counts round to batches).
    return pd.Series([f"{c:.1e}" for c in 6.0 * df["params"] * df["tokens"]], index=df.index)


def budget_name(value) -> str:
    """1.5e+11 for a number of FLOPs, the text itself for a named budget."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def _parabola(name: str, rows: pd.DataFrame) -> IsoFlopBudget | str:
    """The budget's parabola and minimum, or why it has none."""
    if len(rows) < 3:
        return f"{len(rows)} point(s); a parabola needs at least 3"
    log_n = np.log(rows["params"].to_numpy())
    if np.unique(log_n).size < 3:
        return f"{np.unique(log_n).size} distinct model size(s); a parabola needs at least 3"
    c2, c1, c0 = np.polyfit(log_n, rows["loss"].to_numpy(), 2)
    if not c2 > 0:
        return f"parabola is not convex (c2 = {c2:.3g}): no minimum"
    log_n_opt = -c1 / (2 * c2)
    flops = float(np.exp(np.mean(np.log(6.0 * rows["params"] * rows["tokens"]))))
    n_opt = float(np.exp(log_n_opt))
    return IsoFlopBudget(
        budget=name,
        flops=flops,
        n_points=len(rows),
        coefficients=(float(c2), float(c1), float(c0)),
        n_opt=n_opt,
        d_opt=flops / (6.0 * n_opt),
        loss_opt=float(c0 - c1**2 / (4 * c2)),
        interior=bool(log_n.min() <= log_n_opt <= log_n.max()),
    )


def _frontier_lines(budgets: Sequence[IsoFlopBudget]) -> tuple[float, float, float, float]:
    """(a, n_intercept, b, d_intercept) of the least-squares lines in ln C."""
    log_c = np.log([b.flops for b in budgets])
    a, n_intercept = np.polyfit(log_c, np.log([b.n_opt for b in budgets]), 1)
    b, d_intercept = np.polyfit(log_c, np.log([b.d_opt for b in budgets]), 1)
    return float(a), float(n_intercept), float(b), float(d_intercept)


def _isoflop_bootstrap(budgets: Sequence[IsoFlopBudget], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a_draws, b_draws = [], []
    while len(a_draws) < n:
        idx = rng.integers(0, len(budgets), size=len(budgets))
        if np.unique(idx).size < 2:  # a line through one budget has no slope
            continue
        a, _, b, _ = _frontier_lines([budgets[i] for i in idx])
        a_draws.append(a)
        b_draws.append(b)
    return {"a": np.array(a_draws), "b": np.array(b_draws)}


def fit_isoflop(df: pd.DataFrame, *, budget_column: str = "budget", bootstrap: int = 0, seed: int = 0,
                extrapolated: bool = False) -> IsoFlopFit:
    """Approach 2 of Hoffmann et al. (2022): per-budget parabola minima, then N_opt ∝ C^a, D_opt ∝ C^b.

    Rows are grouped by `budget_column` when present, else by 6·N·D rounded to 2 significant
    digits. Budgets with fewer than 3 sizes, a non-convex parabola or a minimum outside the
    sampled sizes (unless `extrapolated`) are listed in `skipped` and left out of the slopes.
    """
    _check_integer("bootstrap", bootstrap, 0)
    df = check_points(df)
    groups = _budget_groups(df, budget_column)
    budgets, skipped = [], []
    for name, rows in df.groupby(groups, sort=False):
        result = _parabola(str(name), rows)
        if isinstance(result, IsoFlopBudget) and not result.interior and not extrapolated:
            # A minimum beyond the sampled sizes is the parabola's guess, not a measurement: a
            # slope through it says nothing about N_opt(C).
            sizes = rows["params"]
            result = (f"minimum N = {result.n_opt:.3g} lies outside the sampled sizes "
                      f"[{sizes.min():.3g}, {sizes.max():.3g}]; sample sizes around it")
        if isinstance(result, str):
            skipped.append((str(name), result))
        else:
            budgets.append(result)
    budgets.sort(key=lambda b: b.flops)
    if len(budgets) < 2:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped) or "none skipped"
        raise FitError(f"fit_isoflop: {len(budgets)} usable budget(s), need at least 2 for a slope ({reasons})")
    a, n_intercept, b, d_intercept = _frontier_lines(budgets)
    draws = _isoflop_bootstrap(budgets, bootstrap, seed) if bootstrap else {}
    lines = {"a": a, "b": b, "n_intercept": n_intercept, "d_intercept": d_intercept}
    return IsoFlopFit(
        budgets=tuple(budgets), skipped=tuple(skipped), **lines, intervals=_intervals(draws), bootstrap=bootstrap,
        warnings=_isoflop_warnings(budgets, skipped, a),
    )


def _isoflop_warnings(budgets: Sequence[IsoFlopBudget], skipped, a: float) -> tuple[str, ...]:
    out = [f"budget {name} is left out of the N_opt(C) line: {why}" for name, why in skipped]
    if len(budgets) < 3:
        out.append(f"N_opt ∝ C^a rests on {len(budgets)} budgets: a line through two points has no error estimate, so "
                   "its interval means nothing; sample a third budget")
    out += [f"budget {b.budget}: its parabola passes exactly through its 3 points, so its minimum has no error "
            "estimate; sample more sizes" for b in budgets if b.n_points == 3]
    if not 0 < a < 1:
        out.append(f"a = {a:.3g} lies outside (0, 1): N_opt and D_opt cannot both grow with compute, so the minima do "
                   "not follow a compute-optimal frontier")
    return tuple(out)


# --- extrapolation check ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HoldoutRow:
    label: str | int
    params: float
    tokens: float
    measured: float
    predicted: float
    low: float | None = None  # the 95% prediction interval over the held-out fit's bootstrap refits
    high: float | None = None

    @property
    def inside(self) -> bool | None:
        """Whether the measurement falls inside the prediction interval (None without one)."""
        return None if self.low is None else bool(self.low <= self.measured <= self.high)

    @property
    def relative_error(self) -> float:
        """predicted / measured - 1."""
        return self.predicted / self.measured - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "relative_error": self.relative_error, "inside": self.inside}


@dataclasses.dataclass(frozen=True)
class Holdout:
    """A law fitted without the k largest model sizes, and its predictions for them."""

    law: Law
    k: int
    held_params: tuple[float, ...]  # the k largest distinct params values, held out
    fit: ChinchillaFit | PowerFit
    rows: tuple[HoldoutRow, ...]

    @property
    def max_abs_relative_error(self) -> float:
        return max(abs(r.relative_error) for r in self.rows)

    def warnings(self) -> list[str]:
        """The held-out fit's own warnings, and the held-out runs its 95% band misses."""
        out = [f"held-out {self.law} fit: {w}" for w in self.fit.warnings]
        missed = [r for r in self.rows if r.inside is False]
        if missed:
            out.append(f"extrapolation: {len(missed)} of {len(self.rows)} held-out run(s) fall outside the 95% "
                       "prediction interval of the law fitted without them: "
                       + ", ".join(f"{r.label} measured {r.measured:.4f}, predicted [{r.low:.4f}, {r.high:.4f}]"
                                   for r in missed))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": self.law,
            "k": self.k,
            "held_params": list(self.held_params),
            "max_abs_relative_error": self.max_abs_relative_error,
            "rows": [r.to_dict() for r in self.rows],
            "fit": self.fit.to_dict(),
        }


# The rows each law is fitted to, the same in `sweep fit` and `sweep analyze`: one law name, one
# computation. L(N) is the frontier over tokens: the best run of each size.
LAW_ROWS: dict[Law, str] = {"chinchilla": "every run",
                            "power": "the best run per size (lowest loss at each params value)"}


def law_rows(df: pd.DataFrame, law: Law) -> pd.DataFrame:
    """The rows `law` is fitted to (LAW_ROWS)."""
    if law == "power":
        return df.loc[df.groupby("params")["loss"].idxmin()].sort_values("params")
    return df


def _fit_law(df: pd.DataFrame, law: Law, fit_kwargs: Mapping[str, Any]) -> ChinchillaFit | PowerFit:
    if law not in LAWS:
        raise FitError(f"law = {law!r} is not known; accepted: {', '.join(LAWS)}")
    rows = law_rows(df, law)
    if law == "chinchilla":
        return fit_chinchilla(rows, **fit_kwargs)
    return fit_power(rows["params"], rows["loss"], labels=_labels(rows), **fit_kwargs)


def _predict(fit: ChinchillaFit | PowerFit, df: pd.DataFrame) -> np.ndarray:
    if isinstance(fit, ChinchillaFit):
        return fit.predict(df["params"].to_numpy(), df["tokens"].to_numpy())
    return fit.predict(df["params"].to_numpy())


def _holdout(df: pd.DataFrame, k: int, law: Law, fit_kwargs: Mapping[str, Any]) -> Holdout:
    df = check_points(df)
    sizes = np.unique(df["params"].to_numpy())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < sizes.size:
        raise FitError(
            f"holdout k = {k!r} is invalid: must be an integer from 1 to {sizes.size - 1} "
            f"(the points have {sizes.size} distinct params values and at least one must stay for the fit)"
        )
    held = sizes[-k:]
    is_held = df["params"].isin(held).to_numpy()
    fit = _fit_law(df[~is_held], law, fit_kwargs)
    test = law_rows(df[is_held], law)
    inputs = (test["params"].to_numpy(), test["tokens"].to_numpy()) if law == "chinchilla" else \
        (test["params"].to_numpy(),)
    band = fit.predict_interval(*inputs)
    lows, highs = band if band is not None else ([None] * len(test), [None] * len(test))
    rows = tuple(
        HoldoutRow(label=lab, params=float(n), tokens=float(d), measured=float(y), predicted=float(p),
                   low=None if lo is None else float(lo), high=None if hi is None else float(hi))
        for lab, n, d, y, p, lo, hi in zip(_labels(test), test["params"], test["tokens"], test["loss"],
                                           _predict(fit, test), lows, highs)
    )
    return Holdout(law=law, k=int(k), held_params=tuple(float(h) for h in held), fit=fit, rows=rows)


def holdout_largest(df: pd.DataFrame, k: int, law: Law = "chinchilla", **fit_kwargs) -> Holdout:
    """Fit `law` on all rows but those of the k largest params values and predict those rows
    (L(N): the best run of each held size)."""
    return _holdout(df, k, law, fit_kwargs)


# --- the `gptjax sweep fit` command -------------------------------------------------------------


def fit_command(
    csv_path: str | os.PathLike,
    *,
    law: Law,
    exclude_worst: int = 0,
    bootstrap: int = 0,
    holdout_largest: int = 0,
    as_json: bool = False,
    seed: int = 0,
    metric: str = "loss",
    force: bool = False,
) -> str:
    """What `gptjax sweep fit CSV --law ...` prints: one JSON object, or a readable report, its
    warnings first.

    The held-out fit uses the same exclude_worst, seed, force and bootstrap (its refits give the
    predictions' intervals). An extrapolation that cannot be made is a warning, not an error.
    """
    if law not in LAWS:
        raise FitError(f"law = {law!r} is not known; accepted: {', '.join(LAWS)}")
    df = read_points(csv_path, law=law, metric=metric)
    fit = _fit_law(df, law, {"exclude_worst": exclude_worst, "bootstrap": bootstrap, "seed": seed, "force": force})
    warnings = list(fit.warnings)
    held = None
    if holdout_largest:
        try:
            held = _holdout(df, holdout_largest, law, {"exclude_worst": exclude_worst, "seed": seed, "force": force,
                                                       "bootstrap": bootstrap})
        except FitError as e:
            warnings.append(f"extrapolation to the {holdout_largest} largest size(s) not made: {e}")
        else:
            warnings += held.warnings()
    rows = {"law": LAW_ROWS[law], "used": fit.n_points + len(fit.excluded), "of": len(df), "metric": metric}
    if as_json:
        out = {"csv": str(csv_path), **fit.to_dict(), "warnings": warnings,
               "diagnostics": {**fit.diagnostics, "rows": rows}}
        if held is not None:
            out["holdout"] = held.to_dict()
        return json.dumps(out, default=_json_number)
    return _report(str(csv_path), fit, held, warnings, rows)


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _report(source: str, fit: ChinchillaFit | PowerFit, held: Holdout | None, warnings: list[str],
            rows: dict) -> str:
    values = fit.to_dict()
    if isinstance(fit, ChinchillaFit):
        title, names = "L(N, D) = E + A/N^alpha + B/D^beta", ("E", "A", "B", "alpha", "beta", "a", "b")
    else:
        title, names = "L(N) = E + A/N^alpha", ("E", "A", "alpha")
    excluded = f", excluded {len(fit.excluded)}: {', '.join(map(str, fit.excluded))}" if fit.excluded else ""
    lines = [f"{source}: {title} on {rows['metric']}"]
    lines += [f"warning: {w}" for w in warnings]
    lines += [
        f"rows: {rows['law']}: {rows['used']} of {rows['of']}",
        f"points {fit.n_points}{excluded}; residual RMS (log loss) {fit.residual_rms:.4g}; bootstrap {fit.bootstrap}",
        f"{'':8}{'value':>12}{'2.5%':>12}{'97.5%':>12}",
    ]
    for name in names:
        lo, hi = (f"{v:12.5g}" for v in fit.intervals[name]) if name in fit.intervals else (f"{'-':>12}",) * 2
        lines.append(f"{name:8}{values[name]:12.5g}{lo}{hi}")
    if held is not None:
        lines.append(f"held out: the {held.k} largest params values, fitted on the rest")
        lines.append(f"{'name':>12}{'params':>12}{'tokens':>12}{'measured':>10}{'predicted':>10}{'rel.err':>9}"
                     f"{'95% interval':>20}")
        for r in held.rows:
            band = "" if r.low is None else f"[{r.low:.4f}, {r.high:.4f}] {'in' if r.inside else 'OUT'}"
            lines.append(
                f"{str(r.label):>12}{r.params:12.4g}{r.tokens:12.4g}{r.measured:10.4f}{r.predicted:10.4f}"
                f"{r.relative_error:+9.2%}{band:>20}"
            )
    return "\n".join(lines)
