"""report.html (sweeps/webpage.py): `gptjax sweep analyze` writes one self-contained page whose
plots draw in a browser with no network and no console errors, the fit's warnings first."""

import json
import re
import subprocess

import helpers
import numpy as np
import pytest

from gptjax.sweeps import report

E, A, ALPHA = 2.0, 40.0, 0.3


def _study(d):
    """A finished IsoFLOP study as its runs would leave it (manifest, result.json, metrics.jsonl),
    and the plan it was run from; losses on a known law, a little noisy."""
    rng = np.random.default_rng(0)
    entries, planned = [], []
    for budget in (1e12, 3e12, 1e13):
        for n in np.geomspace(1e4, 1e6, 6):
            name = f"C{budget:.0e}-N{n:.0f}-seed0"
            tokens = budget / (6 * n)
            loss = E + A / n ** ALPHA + 60 / tokens ** 0.25 + 0.003 * rng.standard_normal()
            run_dir = d / name
            run_dir.mkdir(parents=True)
            steps = 50
            (run_dir / "result.json").write_text(json.dumps({
                "status": "finished", "non_embedding_params": n, "params": n, "tokens": tokens, "flops": budget,
                "final_val_loss": loss, "best_val_loss": loss, "steps": steps}))
            rate = 2e5 / (1 + n / 1e5)
            (run_dir / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "loss": loss + 3 / s, "tokens_per_sec": rate}) + "\n" for s in range(1, steps + 1)))
            entries.append({"name": name, "run_dir": str(run_dir), "overrides": [], "point": {}, "seed": 0,
                            "budget": budget})
            planned.append({"name": name, "steps": steps, "wall_hours": tokens / rate / 3600 * 0.8})
    (d / "sweep.json").write_text(json.dumps({"name": "study", "base": "x", "runs": entries}))
    (d / "plan.json").write_text(json.dumps({"mfu": 0.4, "target": {"description": "8 CPU devices"},
                                             "runs": planned}))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    _study(d)
    summary = report.analyze(str(d), holdout_largest=1, bootstrap=10)
    return d / "report.html", summary


def test_the_page_is_self_contained_with_the_warnings_first(page):
    path, summary = page
    text = path.read_text()
    assert not re.search(r"<script[^>]+src=", text), "a script loaded from elsewhere"
    assert "Plotly" in text and text.count("plotly-graph-div") == 4  # curves, IsoFLOP, laws, plan vs measured
    assert text.index("Warnings: read these") < text.index("plotly-graph-div")
    for warning in summary["warnings"]:
        assert warning.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;") \
            .replace('"', "&quot;") in text
    assert text.count('<td class="finished">finished</td>') == 18
    assert "IsoFLOP parabolas" in text and "planned at MFU 40%" in text


@pytest.mark.slow
def test_the_plots_draw_in_a_browser_without_errors(page, tmp_path):
    browser = helpers.browser()
    path, _ = page
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    # Plotly builds each plot's SVG when its script runs: four drawn plots, with their traces.
    assert dom.stdout.count('class="plot-container plotly"') == 4, dom.stderr[-2000:]
    assert dom.stdout.count('class="scatterlayer') == 4 and dom.stdout.count("<path") > 100
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    png = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={png}", "--window-size=1280,1600", path.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    colored = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()  # plot lines and markers, not grey text
    assert colored > 0.003, f"the screenshot is nearly colourless ({colored:.4f}): nothing drawn"
