"""The documentation site: `mkdocs build --strict` passes, its reference pages (generated from the
code at build time) name every config field and every command, and a browser draws its pages.
The pages' commands run in tests/test_docs_pages.py."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import typing

import helpers
import pytest

from gptjax import cli
from gptjax.config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from _fields(kind, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]')")
    site = tmp_path_factory.mktemp("docs") / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return site


@pytest.mark.slow
def test_the_site_builds_strictly_with_references_from_the_code(site):
    tmp_path = site.parent
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    missing = [name for name in _fields(TrainConfig) if f"<code>{name}</code>" not in config]
    assert not missing, f"config fields missing from the reference: {missing}"
    commands = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    parser = cli.build_parser()
    names = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0].choices
    assert all(f"<code>{name}</code>" in commands for name in names), [n for n in names if n not in commands]
    assert "--max-new-tokens" in commands and "data.unknown_chars" in config


@pytest.mark.slow
@pytest.mark.parametrize("page", ["index.html", "reference/config/index.html"])
def test_pages_render_in_a_browser(site, tmp_path, page):
    """Headless chromium draws the home page and a reference page: a screenshot with the theme's
    header colour and text, not an empty or unstyled page (these screenshots were looked at)."""
    browser = helpers.browser()
    png = tmp_path / "page.png"
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                          "--window-size=1280,900", (site / page).as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert png.is_file(), out.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"))
    header = pixels[10:40, 300:900].reshape(-1, 3)
    assert (np.abs(header.astype(int) - (64, 81, 181)).sum(axis=1) < 60).mean() > 0.9, "no Material header"
    body = pixels[100:800, 250:1000]
    assert len(np.unique(body.reshape(-1, 3), axis=0)) > 50 and (body.sum(axis=2) < 300).mean() > 0.002, \
        "no text drawn"

