"""`gptjax sweep analyze DIR`: results.csv, fitted laws, ablation statistics, plots, report.md.

Every number comes from the run directories (result.json, metrics.jsonl, config.yaml), so the
analysis is the same wherever the runs ran. `params` in results.csv is the non-embedding count
(Kaplan et al.'s N; total_params beside it) and `loss` the final validation loss; that CSV is what
`gptjax sweep fit` reads.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pandas as pd

from gptjax.config import ConfigError
from gptjax.store import paths
from gptjax.sweeps import fit as fit_lib
from gptjax.sweeps import webpage
from gptjax.sweeps.runner import read_manifest, read_result, statuses, statuses_unchecked

PLOTS = ("loss_vs_params.png", "isoflop.png", "frontier.png", "loss_curves.png", "ablation.png", "holdout.png")


def collect(directory: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per run of the sweep: its point, seed, status, result, and a column per recorded
    evaluation metric (eval/NAME/METRIC); and warnings about what could not be checked."""
    warnings = []
    try:
        entries = statuses(directory)
    except ConfigError as e:  # sweep.yaml no longer resolves (a base file moved): statuses without it
        warnings.append(f"staleness not checked: {directory}/sweep.yaml cannot be resolved ({e})")
        entries = statuses_unchecked(directory)
    rows = []
    for entry in entries:
        result = read_result(entry["run_dir"]) or {}
        point = {k.rsplit(".", 1)[-1]: _scalar(v) for k, v in (entry.get("point") or {}).items()}
        evals = {f"eval/{name}/{k}": v for name, metrics in (result.get("evals") or {}).items()
                 for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        rows.append({"name": entry["name"], "status": entry["status"], "seed": entry["seed"],
                     "budget": entry.get("budget"), "variant": _variant(entry), **point,
                     "params": result.get("non_embedding_params"), "total_params": result.get("params"),
                     "tokens": result.get("tokens"), "flops": result.get("flops"),
                     "loss": result.get("final_val_loss"), "best_val_loss": result.get("best_val_loss"),
                     "steps": result.get("steps"), "wall_time_s": result.get("wall_time_s"),
                     "tokens_per_sec": result.get("tokens_per_sec"), "error": entry.get("error"),
                     "changes": "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in entry.get("changes", [])) or None,
                     **evals, "run_dir": entry["run_dir"]})
    return pd.DataFrame(rows), warnings


def metric_column(metric: str) -> str:
    """The results.csv column of a metric: `val_loss` is the final validation loss (`loss`)."""
    return "loss" if metric in ("val_loss", "loss") else metric


def _scalar(v: Any) -> Any:
    return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def _variant(entry: dict) -> str:
    """The run's name without its seed: runs of one variant differ only by seed."""
    return entry["name"].rsplit("-seed", 1)[0] or "base"


def _finished(df: pd.DataFrame, column: str = "loss") -> pd.DataFrame:
    """Finished runs with a finite value of `column`, which becomes their `loss`."""
    if column not in df.columns:
        return df.iloc[0:0].copy()
    done = df[(df["status"] == "finished") & df[column].notna()].copy()
    done["loss"] = done[column].astype(float)
    return done[np.isfinite(done["loss"])]


def analyze(directory: str, *, holdout_largest: int = 1, bootstrap: int = 100, seed: int = 0,
            metric: str = "val_loss", force: bool = False) -> dict:
    """Write results.csv, report.md and the plots into `directory`; returns what report.md says.
    Fits use `metric` (any recorded metric: val_loss, best_val_loss, eval/NAME/METRIC); stale runs
    and runs without the metric are left out, each with a warning."""
    import matplotlib

    matplotlib.use("Agg")
    df, warnings = collect(directory)
    out = paths.as_path(directory)
    paths.write_text(out / "results.csv", df.drop(columns=["run_dir"]).to_csv(index=False))
    column = metric_column(metric)
    done = _finished(df, column)
    summary: dict[str, Any] = {"runs": len(df), "finished": int((df["status"] == "finished").sum()),
                               "failed": int((df["status"] == "failed").sum()), "metric": metric, "plots": []}
    stale = df[df["status"] == "stale"]
    if len(stale):
        warnings.append(f"{len(stale)} stale run(s) left out: their config differs from the sweep file in a field that "
                        f"changes what is trained ({', '.join(stale['name'])}); `gptjax sweep run SWEEP "
                        "--rerun-changed` trains them anew")
    lacking = df[(df["status"] == "finished") & ~df["name"].isin(done["name"])]
    if len(lacking):
        hint = "; `gptjax sweep eval DIR --set NAME=FILE` measures a held-out set on finished runs" \
            if metric.startswith("eval/") else ""
        warnings.append(f"{len(lacking)} finished run(s) have no {metric} and are left out: "
                        f"{', '.join(lacking['name'])}{hint}")
    summary["fits"] = _fits(done, bootstrap, seed, force)
    for name, fit in summary["fits"].items():
        warnings += [f"{name}: {w}" for w in fit.get("warnings", [])]
        if "error" in fit:
            warnings.append(f"{name} not fitted: {fit['error']}")
    summary["agreement"] = _agreement(summary["fits"], warnings)
    summary["holdout"] = _holdout(done, summary["fits"], holdout_largest, force, warnings, bootstrap, seed)
    summary["ablation"] = ablation(done)
    summary["lr_transfer"] = lr_transfer(done)
    summary["warnings"] = warnings
    local = _local_dir(out)
    drawn = []
    for name, draw in (("loss_vs_params.png", _plot_loss_vs_params), ("isoflop.png", _plot_isoflop),
                       ("frontier.png", _plot_frontier), ("loss_curves.png", _plot_curves),
                       ("ablation.png", _plot_ablation), ("holdout.png", _plot_holdout),
                       ("lr_transfer.png", _plot_lr_transfer)):
        path = os.path.join(local, name)
        if draw(df, done, summary, path):
            summary["plots"].append(name)
            drawn.append(path)
            if paths.is_remote(out):
                paths.copy_file(path, out / name)
    paths.write_text(out / "report.md", report_markdown(directory, df, summary))
    webpage.write(directory, df, done, summary, column)  # report.html: the same, to look at
    paths.write_text(out / "analysis.json", json.dumps(summary, indent=1, default=_json_default))
    _track(directory, df, summary, drawn)
    return summary


def _holdout(done: pd.DataFrame, fits: dict, k: int, force: bool, warnings: list[str], bootstrap: int,
             seed: int) -> dict | None:
    """The extrapolation check (predictions with bootstrap intervals), or a warning saying why it
    could not be made."""
    if not k or done.empty:
        return None
    law = "chinchilla" if "E" in fits.get("chinchilla", {}) else "power"
    try:
        held = fit_lib.holdout_largest(_points(done), k, law=law, force=force, bootstrap=bootstrap, seed=seed)
    except (fit_lib.FitError, ValueError, np.linalg.LinAlgError) as e:
        warnings.append(f"extrapolation to the {k} largest size(s) not made: {e}")
        return {"error": str(e)}
    warnings += held.warnings()
    return held.to_dict()


def _agreement(fits: dict, warnings: list[str]) -> dict | None:
    """Approach 3's and approach 2's N_opt ∝ C^a side by side: they estimate the same exponent, so
    intervals that do not overlap mean at least one of them is wrong for these runs."""
    three, two = fits.get("chinchilla", {}), fits.get("isoflop", {})
    if "a" not in three or "a" not in two:
        return None
    i3, i2 = three.get("intervals", {}).get("a"), two.get("intervals", {}).get("a")
    overlap = None if not (i3 and i2) else bool(i3[0] <= i2[1] and i2[0] <= i3[1])
    if overlap is False:
        warnings.append(f"approaches 2 and 3 disagree on N_opt ∝ C^a: a = {three['a']:.3g} [{i3[0]:.3g}, {i3[1]:.3g}] "
                        f"from L(N, D), {two['a']:.3g} [{i2[0]:.3g}, {i2[1]:.3g}] from the IsoFLOP minima; their "
                        "intervals do not overlap")
    return {"approach_3": {"a": three["a"], "interval": i3}, "approach_2": {"a": two["a"], "interval": i2},
            "overlap": overlap}


def _track(directory: str, df: pd.DataFrame, summary: dict, plots: list[str]) -> None:
    """The analysis goes to W&B too when the sweep's runs log there."""
    from gptjax.store.rundir import RunDir

    for run_dir in df["run_dir"]:
        rd = RunDir(run_dir, read_only=True)
        if rd.has_config():
            wcfg = rd.read_config().logging.wandb
            if wcfg is not None:
                from gptjax.training import tracking

                tracking.log_analysis(directory, wcfg, read_manifest(directory).get("name", "sweep"), summary, plots)
            return


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _local_dir(out) -> str:
    if not paths.is_remote(out):
        return os.fspath(out)
    import tempfile

    return tempfile.mkdtemp(prefix="gptjax-analyze-")


def _points(done: pd.DataFrame) -> pd.DataFrame:
    cols = ["name", "params", "tokens", "loss"] + (["budget"] if done["budget"].notna().any() else [])
    pts = done[cols].copy()
    for c in ("params", "tokens", "loss"):
        pts[c] = pts[c].astype(float)
    return pts.reset_index(drop=True)


def _safe(f):
    try:
        return f()
    except (fit_lib.FitError, ValueError, np.linalg.LinAlgError) as e:
        return {"error": str(e)}


def _fits(done: pd.DataFrame, bootstrap: int, seed: int, force: bool = False) -> dict:
    """Chinchilla approach 3 where tokens vary, approach 2 where there are budgets, L(N) on the
    best run per size (fit_lib.law_rows: what `sweep fit --law power` fits) and the frontier L(C)."""
    fits: dict[str, Any] = {}
    if done.empty or done["params"].nunique() < 3:
        return fits
    pts = _points(done)
    options = {"bootstrap": bootstrap, "seed": seed, "force": force}
    if pts["tokens"].nunique() >= 3:
        fits["chinchilla"] = _safe(lambda: fit_lib.fit_chinchilla(pts, **options).to_dict())
    if "budget" in pts and pts["budget"].nunique() >= 2:
        fits["isoflop"] = _safe(lambda: fit_lib.fit_isoflop(pts, bootstrap=bootstrap, seed=seed).to_dict())
    best = fit_lib.law_rows(pts, "power")
    if len(best) >= 3:
        fits["power_params"] = _safe(lambda: fit_lib.fit_power(best["params"].values, best["loss"].values,
                                                               labels=list(best["name"]), **options).to_dict())
    if "budget" in pts and pts["budget"].nunique() >= 3:
        frontier = pts.loc[pts.groupby("budget")["loss"].idxmin()]
        fits["power_compute"] = _safe(lambda: fit_lib.fit_power(frontier["budget"].values, frontier["loss"].values,
                                                                **options).to_dict())
    return fits


# --- ablations -------------------------------------------------------------------------------

def ablation(done: pd.DataFrame) -> list[dict]:
    """Mean ± std of the final loss per variant and Welch's t-test of each against the first
    (a difference smaller than seed noise has p well above 0.05)."""
    from scipy import stats

    groups = [(v, g["loss"].astype(float).values) for v, g in done.groupby("variant", sort=False)]
    if len(groups) < 2 or max(len(x) for _, x in groups) < 2:
        return []
    base_name, base = groups[0]
    rows = []
    for name, x in groups:
        row = {"variant": name, "n": len(x), "mean": float(np.mean(x)),
               "std": float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")}
        if name != base_name and len(x) > 1 and len(base) > 1:
            t = stats.ttest_ind(x, base, equal_var=False)
            row.update(vs=base_name, diff=float(np.mean(x) - np.mean(base)), t=float(t.statistic),
                       p=float(t.pvalue), significant=bool(t.pvalue < 0.05))
        rows.append(row)
    return rows


def lr_transfer(done: pd.DataFrame) -> list[dict]:
    """Where a sweep varies the learning rate and the width (and perhaps the parametrization):
    the best learning rate at each width. Under μP it should not move as the model widens."""
    if not {"lr", "d_model"} <= set(done.columns) or done["lr"].nunique() < 3 or done["d_model"].nunique() < 2:
        return []
    by = ["parametrization", "d_model"] if "parametrization" in done.columns else ["d_model"]
    rows = []
    for key, g in done.groupby(by):
        mean = g.groupby("lr")["loss"].mean()
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "best_lr": float(mean.idxmin()), "best_loss": float(mean.min())})
    return rows


# --- plots -----------------------------------------------------------------------------------

def _save(fig, path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def _plot_loss_vs_params(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    if done.empty or done["params"].nunique() < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    groups = done.groupby("budget") if done["budget"].notna().any() else [(None, done)]
    chin = summary["fits"].get("chinchilla")
    for budget, g in groups:
        label = f"C = {budget:.2g}" if budget is not None else "runs"
        line = ax.scatter(g["params"], g["loss"], label=label, s=18)
        if chin and "E" in chin and budget is not None:
            n = np.geomspace(g["params"].min() / 1.5, g["params"].max() * 1.5, 50)
            d = g["tokens"].astype(float).values * g["params"].astype(float).values
            tokens = np.exp(np.mean(np.log(d))) / n  # the budget's N·D held fixed
            ax.plot(n, chin["E"] + chin["A"] / n ** chin["alpha"] + chin["B"] / tokens ** chin["beta"],
                    color=line.get_facecolor()[0], lw=1)
    power = summary["fits"].get("power_params")
    if power and "E" in power:
        n = np.geomspace(done["params"].min() / 1.5, done["params"].max() * 1.5, 50)
        ax.plot(n, power["E"] + power["A"] / n ** power["alpha"], "k--", lw=1,
                label=f"L(N) = {power['E']:.2f} + {power['A']:.3g}/N^{power['alpha']:.3f}")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel=_ylabel(summary),
           title="loss against parameters")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_isoflop(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    iso = summary["fits"].get("isoflop")
    if not iso or "budgets" not in iso:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for b in iso["budgets"]:
        g = done[done["budget"].map(fit_lib.budget_name) == b["budget"]] if done["budget"].notna().any() else done
        line = ax.scatter(g["params"], g["loss"], s=18, label=f"C = {float(b['flops']):.2g}")
        x = np.linspace(np.log(g["params"].min()) - 0.3, np.log(g["params"].max()) + 0.3, 60)
        c2, c1, c0 = b["coefficients"]
        ax.plot(np.exp(x), c2 * x**2 + c1 * x + c0, color=line.get_facecolor()[0], lw=1)
        ax.plot([b["n_opt"]], [b["loss_opt"]], "k*", ms=8)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel=_ylabel(summary),
           title=f"IsoFLOP parabolas (N_opt ∝ C^{iso['a']:.2f}, D_opt ∝ C^{iso['b']:.2f})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_frontier(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    if done.empty or not done["budget"].notna().any() or done["budget"].nunique() < 2:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    best = done.loc[done.groupby("budget")["loss"].idxmin()].sort_values("budget")
    ax1.plot(best["budget"], best["loss"], "o-", label="best run per budget")
    power = summary["fits"].get("power_compute")
    if power and "E" in power:
        c = np.geomspace(best["budget"].min() / 2, best["budget"].max() * 2, 50)
        ax1.plot(c, power["E"] + power["A"] / c ** power["alpha"], "k--", lw=1, label="L(C) fit")
    ax1.set(xscale="log", xlabel="training FLOPs C", ylabel="loss", title="compute-optimal frontier")
    ax1.legend(fontsize=7)
    iso = summary["fits"].get("isoflop")
    if iso and "budgets" in iso:
        c = np.array([b["flops"] for b in iso["budgets"]])
        ax2.loglog(c, [b["n_opt"] for b in iso["budgets"]], "o", label="N_opt (parabola minima)")
        cc = np.geomspace(c.min() / 2, c.max() * 2, 20)
        ax2.loglog(cc, np.exp(iso["n_intercept"]) * cc ** iso["a"], "k--", lw=1, label=f"∝ C^{iso['a']:.2f}")
        ax2.set(xlabel="training FLOPs C", ylabel="N_opt")
        ax2.legend(fontsize=7)
    else:
        ax2.loglog(best["budget"], best["params"], "o")
        ax2.set(xlabel="training FLOPs C", ylabel="N of the best run")
    return _save(fig, path)


def _plot_curves(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    drawn = 0
    for _, row in df.iterrows():
        metrics = paths.as_path(row["run_dir"]) / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], lw=0.7, alpha=0.8, label=row["name"] if len(df) <= 12 else None)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss curves")
    if len(df) <= 12:
        ax.legend(fontsize=6)
    return _save(fig, path)


def _plot_ablation(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    rows = summary["ablation"]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 4))
    x = np.arange(len(rows))
    ax.errorbar(x, [r["mean"] for r in rows], yerr=[0 if math.isnan(r["std"]) else r["std"] for r in rows],
                fmt="o", capsize=4)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="final validation loss (mean ± std over seeds)", title="ablation")
    return _save(fig, path)


def _plot_holdout(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    hold = summary.get("holdout")
    if not hold or "rows" not in hold:
        return False
    fig, ax = plt.subplots(figsize=(5, 4))
    pts = _points(done)
    ax.scatter(pts["params"], pts["loss"], s=12, c="grey", label="measured (fitted)")
    held = hold["rows"]
    ax.scatter([r["params"] for r in held], [r["measured"] for r in held], s=30, c="C3", label="measured (held out)")
    ax.scatter([r["params"] for r in held], [r["predicted"] for r in held], marker="x", s=40, c="k",
               label="predicted")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel=_ylabel(summary),
           title="extrapolation to the largest runs")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_lr_transfer(df, done, summary, path) -> bool:
    import matplotlib.pyplot as plt

    if not summary["lr_transfer"]:
        return False
    kinds = sorted(done["parametrization"].unique()) if "parametrization" in done.columns else [None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.8), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        part = done if kind is None else done[done["parametrization"] == kind]
        for width, g in part.groupby("d_model"):
            mean = g.groupby("lr")["loss"].mean()
            line, = ax.plot(mean.index, mean.values, "o-", ms=3, label=f"width {width}")
            ax.plot([mean.idxmin()], [mean.min()], "*", ms=10, color=line.get_color())
        ax.set(xscale="log", xlabel="learning rate", title=kind or "learning rate", ylabel=_ylabel(summary))
        ax.legend(fontsize=7)
    return _save(fig, path)


def _ylabel(summary: dict) -> str:
    metric = summary.get("metric", "val_loss")
    return "final validation loss" if metric == "val_loss" else metric


# --- report.md -------------------------------------------------------------------------------

def _interval(fit: dict, key: str, fmt: str = ".4g") -> str:
    value = format(fit[key], fmt)
    lo_hi = fit.get("intervals", {}).get(key)
    return f"{value} [{format(lo_hi[0], fmt)}, {format(lo_hi[1], fmt)}]" if lo_hi else value


def report_markdown(directory: str, df: pd.DataFrame, summary: dict) -> str:
    metric = summary.get("metric", "val_loss")
    stale = int((df["status"] == "stale").sum()) if "status" in df else 0
    lines = [f"# Sweep report: {directory}", "",
             f"{summary['runs']} runs: {summary['finished']} finished, {summary['failed']} failed, {stale} stale. "
             f"Fitted metric: `{metric}`.", ""]
    if summary.get("warnings"):
        lines += ["## Warnings", "", "Read these before the numbers below: each says why a number may not be trusted "
                  "(docs/scaling.md, \"Fits, and what their warnings mean\").", ""]
        lines += [f"- {w}" for w in summary["warnings"]] + [""]
    failed = df[df["status"] == "failed"]
    lines += [f"- failed `{r['name']}`: {r['error']}" for _, r in failed.iterrows()]
    fits = summary["fits"]
    if "chinchilla" in fits and "E" in fits["chinchilla"]:
        f = fits["chinchilla"]
        lines += ["", "## L(N, D) = E + A/N^α + B/D^β (Chinchilla approach 3; Huber δ=1e-3 on log loss, L-BFGS)", "",
                  "| parameter | fit [95% bootstrap] |", "|---|---|"]
        lines += [f"| {k} | {_interval(f, k)} |" for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in f]
        lines += ["", f"Residual RMS in log loss: {f['residual_rms']:.4f} over {f['n_points']} runs."]
    if "isoflop" in fits and "a" in fits["isoflop"]:
        f = fits["isoflop"]
        lines += ["", "## IsoFLOP (approach 2)", "", f"N_opt ∝ C^{_interval(f, 'a', '.3f')}, "
                  f"D_opt ∝ C^{_interval(f, 'b', '.3f')} over {len(f['budgets'])} budgets."]
        lines += [f"- budget {b['budget']} (6·N·D = {b['flops']:.3g}): N_opt = {b['n_opt']:.3g}, "
                  f"L_opt = {b['loss_opt']:.4f}" + ("" if b["interior"] else " (minimum outside the sampled sizes: "
                                                   "extrapolated)") for b in f["budgets"]]
        lines += [f"- budget {s['budget']}: left out ({s['reason']})" for s in f.get("skipped", [])]
    for key, title in (("power_params", f"L(N) = E + A/N^α, on {fit_lib.LAW_ROWS['power']}"),
                       ("power_compute", "L(C) = E + A/C^α (frontier: the best run per budget)")):
        if key in fits and "E" in fits[key]:
            f = fits[key]
            lines += ["", f"## {title}", "", f"E = {_interval(f, 'E')}, A = {_interval(f, 'A')}, "
                      f"α = {_interval(f, 'alpha')}; residual RMS {f['residual_rms']:.4f}."]
    hold = summary.get("holdout")
    if hold and "rows" in hold:
        lines += ["", f"## Extrapolation: the {hold['law']} law fitted without the {hold['k']} largest size(s), "
                  "predicting them", "",
                  "| run | N | D | predicted [95% bootstrap] | measured | relative error | inside |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['params']:.3g} | {r['tokens']:.3g} | {r['predicted']:.4f}"
                  + ("" if r["low"] is None else f" [{r['low']:.4f}, {r['high']:.4f}]")
                  + f" | {r['measured']:.4f} | {100 * r['relative_error']:+.2f}% | "
                  + {True: "yes", False: "**no**", None: "—"}[r["inside"]] + " |" for r in hold["rows"]]
    agree = summary.get("agreement")
    if agree:
        i3, i2 = agree["approach_3"]["interval"], agree["approach_2"]["interval"]
        shown = {True: "their intervals overlap", False: "**their intervals do not overlap**",
                 None: "no intervals (no bootstrap)"}[agree["overlap"]]
        lines += ["", "## N_opt ∝ C^a: approach 3 against approach 2", "",
                  f"L(N, D): a = {agree['approach_3']['a']:.3g}" + (f" [{i3[0]:.3g}, {i3[1]:.3g}]" if i3 else "")
                  + f"; IsoFLOP minima: a = {agree['approach_2']['a']:.3g}"
                  + (f" [{i2[0]:.3g}, {i2[1]:.3g}]" if i2 else "") + f": {shown}."]
    if summary["ablation"]:
        lines += ["", "## Ablation (final validation loss; Welch's t-test against the first variant)", "",
                  "| variant | n | mean ± std | Δ vs first | p | beyond seed noise |", "|---|---|---|---|---|---|"]
        for r in summary["ablation"]:
            lines.append(f"| {r['variant']} | {r['n']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                         + (f"{r['diff']:+.4f} | {r['p']:.3g} | {'yes' if r['significant'] else 'no'} |" if "p" in r
                            else "— | — | — |"))
    if summary["lr_transfer"]:
        keys = [k for k in summary["lr_transfer"][0] if k not in ("best_lr", "best_loss")]
        lines += ["", "## Best learning rate per width", "", "| " + " | ".join(keys) + " | best lr | loss |",
                  "|" + "---|" * (len(keys) + 2)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + f" | {r['best_lr']:.3g} | {r['best_loss']:.4f} |"
                  for r in summary["lr_transfer"]]
    if summary["plots"]:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in summary["plots"]]
    return "\n".join(lines) + "\n"
