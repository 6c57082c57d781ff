"""The report in a real browser: headless Chromium (Debian's `chromium`, installed by `make browser`)
driven by Playwright opens the report from disk; no console error, no request leaves the file,
every figure is there with a non-zero size, and a screenshot is saved under tests/artifacts/."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from multikpi.report.html_report import write_report

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
# The flags this machine needs (no sandbox as root, no GPU, no background traffic on a closed network).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIGURES = ["losses", "valid-metrics", "weights", "calibration", "regression", "gates", "gates-over-steps",
           "coverage", "pareto"]


def chromium_or_skip() -> str:
    """The Chromium executable; as root, `make browser` installs it when it is missing."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("make"):
        subprocess.run(["make", "-s", "browser"], cwd=REPO, capture_output=True, text=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no Chromium on this machine and `make browser` (apt-get install -y chromium, as root) "
                    "could not install it")
    return found


@pytest.mark.slow
def test_report_in_headless_chromium(report_run, tmp_path):
    chromium = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (multikpi[dev]) is missing")
    report = write_report(report_run, tmp_path / "report.html")
    errors: list[str] = []
    requests: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800})
        try:
            page = browser.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            figures = page.eval_on_selector_all("img.report-figure", """images => images.map(img => ({
                key: img.dataset.figure, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
                shown: [img.getBoundingClientRect().width, img.getBoundingClientRect().height]}))""")
            page.screenshot(path=str(ARTIFACTS / "report_first_screen.png"))
            page.screenshot(path=str(ARTIFACTS / "report_full_page.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots: {ARTIFACTS / 'report_first_screen.png'}, {ARTIFACTS / 'report_full_page.png'}")
    assert errors == []
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert [f["key"] for f in figures] == FIGURES
    for figure in figures:
        assert figure["complete"] and min(figure["natural"]) > 0 and min(figure["shown"]) > 0, figure
        assert figure["shown"][0] <= 1280, figure  # fits the laptop-sized window
