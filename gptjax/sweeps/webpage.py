"""report.html: one self-contained page to look at a sweep (`gptjax sweep analyze` writes it).

The fit's warnings first, then interactive plots (Plotly, its JavaScript inlined once, so the page
reads offline with no server): loss curves of every run, the IsoFLOP parabolas with their minima,
loss against parameters with the fitted laws and their 95% intervals, the plan's predicted step
time against the measured one (when the sweep was planned: plan.json), and the status of every run.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import pandas as pd

from gptjax.store import paths
from gptjax.sweeps import fit as fit_lib

PAGE = "report.html"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em}.warn{background:#fff4e5;border-left:4px solid #e8590c;
padding:.6em 1em}.warn li{margin:.2em 0}table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;
padding:3px 8px;text-align:left}th{background:#f4f4f4}.finished{color:#2b8a3e}.failed,.stale{color:#c92a2a}"""


def _figure(title: str, x_title: str, y_title: str, *, log_x: bool = False, log_y: bool = False):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white", height=430,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"font": {"size": 10}})
    fig.update_xaxes(type="log" if log_x else "linear")
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def _metrics(run_dir: str) -> list[dict]:
    path = paths.as_path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curves(df: pd.DataFrame):
    import plotly.graph_objects as go

    fig = _figure("training loss of every run", "step", "training loss", log_y=True)
    for _, row in df.iterrows():
        rows = _metrics(row["run_dir"])
        if rows:
            fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=[r["loss"] for r in rows], mode="lines",
                                     name=row["name"], line={"width": 1}))
    return fig if fig.data else None


def isoflop(done: pd.DataFrame, summary: dict):
    import plotly.graph_objects as go

    iso = summary["fits"].get("isoflop")
    if not iso or "budgets" not in iso:
        return None
    fig = _figure(f"IsoFLOP parabolas: N_opt ∝ C^{iso['a']:.2f}, D_opt ∝ C^{iso['b']:.2f}",
                  "non-embedding parameters N", summary["metric"], log_x=True)
    for i, b in enumerate(iso["budgets"]):
        g = done[done["budget"].map(fit_lib.budget_name) == b["budget"]]
        label, color = f"C = {float(b['flops']):.2g}", PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=g["params"], y=g["loss"], mode="markers", name=label, text=g["name"],
                                 legendgroup=label, marker={"color": color}))
        x = np.linspace(np.log(g["params"].min()) - 0.3, np.log(g["params"].max()) + 0.3, 80)
        c2, c1, c0 = b["coefficients"]
        fig.add_trace(go.Scatter(x=np.exp(x), y=c2 * x**2 + c1 * x + c0, mode="lines", name=f"{label} parabola",
                                 legendgroup=label, showlegend=False, line={"color": color}))
        fig.add_trace(go.Scatter(x=[b["n_opt"]], y=[b["loss_opt"]], mode="markers", legendgroup=label,
                                 marker={"symbol": "star", "size": 13, "color": "black"}, name=f"{label} minimum",
                                 showlegend=False))
    return fig


def loss_vs_params(done: pd.DataFrame, summary: dict):
    """The runs, the fitted L(N) with the band of its bootstrap intervals, and Chinchilla's
    L(N, D) along each budget."""
    import plotly.graph_objects as go

    if done.empty or done["params"].nunique() < 2:
        return None
    fig = _figure("loss against parameters, with the fitted laws", "non-embedding parameters N", summary["metric"],
                  log_x=True)
    fig.add_trace(go.Scatter(x=done["params"], y=done["loss"], mode="markers", name="runs", text=done["name"]))
    n = np.geomspace(done["params"].min() / 1.5, done["params"].max() * 1.5, 60)
    power = summary["fits"].get("power_params")
    if power and "E" in power:
        fig.add_trace(go.Scatter(x=n, y=power["E"] + power["A"] / n ** power["alpha"], mode="lines",
                                 name=f"L(N) = {power['E']:.3g} + {power['A']:.3g}/N^{power['alpha']:.3f}",
                                 line={"dash": "dash", "color": "black"}))
        band = _band(power, n)
        if band is not None:
            fig.add_trace(go.Scatter(x=np.concatenate([n, n[::-1]]), y=np.concatenate([band[1], band[0][::-1]]),
                                     fill="toself", fillcolor="rgba(0,0,0,0.08)", line={"width": 0},
                                     name="L(N), 95% intervals of E, A, alpha"))
    chin = summary["fits"].get("chinchilla")
    if chin and "E" in chin and done["budget"].notna().any():
        for budget, g in done.groupby("budget"):
            d = g["tokens"].astype(float).values * g["params"].astype(float).values
            tokens = np.exp(np.mean(np.log(d))) / n  # the budget's N·D held fixed
            fig.add_trace(go.Scatter(x=n, y=chin["E"] + chin["A"] / n ** chin["alpha"] + chin["B"] / tokens ** chin["beta"],
                                     mode="lines", name=f"L(N, D) at C = {budget:.2g}", line={"width": 1}))
    # The runs set the scale: a wide interval band or a law far off its points must not flatten them.
    spread = float(done["loss"].max() - done["loss"].min()) or 1.0
    fig.update_yaxes(range=[float(done["loss"].min()) - 0.3 * spread, float(done["loss"].max()) + 0.3 * spread])
    return fig


def _band(fit: dict, n: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Lowest and highest of the law over the corners of its parameters' 95% intervals."""
    intervals = fit.get("intervals") or {}
    if not all(k in intervals for k in ("E", "A", "alpha")):
        return None
    curves = [e + a / n ** al for e in intervals["E"] for a in intervals["A"] for al in intervals["alpha"]]
    return np.min(curves, axis=0), np.max(curves, axis=0)


def planned_vs_measured(df: pd.DataFrame, plan: dict | None):
    """Each run's step time as planned (FLOPs per step at the plan's MFU) against the median one measured."""
    import plotly.graph_objects as go

    if not plan:
        return None
    planned = {r["name"]: r["wall_hours"] * 3600 / r["steps"] for r in plan["runs"] if r.get("steps")}
    names, x, y = [], [], []
    for _, row in df.iterrows():
        rows = _metrics(row["run_dir"])
        rates = [r["tokens_per_sec"] for r in rows if r.get("tokens_per_sec")]
        if row["name"] in planned and rates and row.get("tokens") and row.get("steps"):
            names.append(row["name"])
            x.append(planned[row["name"]])
            y.append(float(row["tokens"]) / float(row["steps"]) / float(np.median(rates)))
    if not names:
        return None
    fig = _figure(f"step time: planned at MFU {plan['mfu']:.0%} on {plan['target']['description']} against measured",
                  "planned seconds per step", "measured seconds per step (median)", log_x=True, log_y=True)
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers", text=names, name="runs"))
    lo, hi = min(x + y), max(x + y)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="as planned", line={"dash": "dot"}))
    return fig


def _status_table(df: pd.DataFrame, metric_column: str) -> str:
    cells = ["<tr><th>run</th><th>status</th><th>parameters (non-embedding)</th><th>steps</th>"
             f"<th>{html.escape(metric_column)}</th><th>note</th></tr>"]
    for _, row in df.iterrows():
        value = row.get(metric_column)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) and np.isfinite(value) else "-"
        note = row.get("error") or row.get("changes") or ""
        cells.append(f"<tr><td>{html.escape(str(row['name']))}</td><td class=\"{row['status']}\">{row['status']}</td>"
                     f"<td>{_int(row.get('params'))}</td><td>{_int(row.get('steps'))}</td><td>{shown}</td>"
                     f"<td>{html.escape(str(note) if isinstance(note, str) else '')}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _int(v: Any) -> str:
    return f"{int(v):,}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"


def page(directory: str, df: pd.DataFrame, done: pd.DataFrame, summary: dict, metric_column: str,
         plan: dict | None) -> str:
    figures = [f for f in (loss_curves(df), isoflop(done, summary), loss_vs_params(done, summary),
                           planned_vs_measured(df, plan)) if f is not None]
    plots = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
             for i, fig in enumerate(figures)]
    warnings = summary.get("warnings") or []
    head = (f"<ul>{''.join(f'<li>{html.escape(w)}</li>' for w in warnings)}</ul>" if warnings else
            "<p>No warnings.</p>")
    stale = int((df["status"] == "stale").sum())
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Sweep report: {html.escape(directory)}"
            f"</title><style>{STYLE}</style></head><body><h1>Sweep report: {html.escape(directory)}</h1>"
            f"<p>{summary['runs']} runs: {summary['finished']} finished, {summary['failed']} failed, {stale} stale. "
            f"Fitted metric: <code>{html.escape(summary['metric'])}</code>. The numbers are in report.md and "
            f"analysis.json.</p><h2>Warnings: read these before the plots</h2><div class=\"warn\">{head}</div>"
            + "".join(f"<div class=\"plot\">{p}</div>" for p in plots)
            + f"<h2>Runs</h2>{_status_table(df, metric_column)}</body></html>")


def write(directory: str, df: pd.DataFrame, done: pd.DataFrame, summary: dict, metric_column: str) -> None:
    from gptjax.sweeps import plan as plan_lib

    paths.write_text(paths.as_path(directory) / PAGE,
                     page(directory, df, done, summary, metric_column, plan_lib.read(directory)))
