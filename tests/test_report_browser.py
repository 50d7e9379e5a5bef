"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package; .ci/run installs
it) opens the page from disk, takes a screenshot that must show the grids, and logs no console message
(the page has no script, so any message is a refused load or a broken page). A copy of the page with
one outside reference shows that such a fault is seen."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from report_helpers import make_run
from trm_lab import draw
from trm_lab.report import write_report

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not found: install Debian's chromium package (apt-get install chromium; .ci/run "
                "does this where it can)")


def screenshot(page: Path, out: Path, profile: Path, size: str = "1280,2400") -> tuple[np.ndarray, list[str]]:
    """(screenshot RGB [H, W, 3], console lines the browser logged) for `page` opened from disk."""
    Image = pytest.importorskip("PIL.Image", reason="reading the screenshot needs Pillow (the report extra)")
    run = subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                          f"--screenshot={out}", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and out.is_file(), run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line or "ERR_FILE" in line]
    with Image.open(out) as im:
        return np.asarray(im.convert("RGB")), console


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path / "run", with_study=True))
    img, console = screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    assert console == [], console
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    pixels = img.reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    assert len(colours) > 20  # not a blank page
    assert (pixels != 255).any(axis=1).mean() > 0.05
    seen = [k for k, c in enumerate(draw.PALETTE) if tuple(c) in colours]
    assert len(seen) >= 8, seen  # the grids are drawn, in the ARC palette

    # the same page with one outside image: the browser refuses it and says so
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</main>", '<img src="https://example.invalid/x.png"></main>'))
    _, console = screenshot(bad, tmp_path / "bad.png", tmp_path / "profile-bad", size="800,600")
    assert any("example.invalid" in line for line in console), console
