"""The compare report: one self-contained HTML file (checked here as text, and opened in headless Chromium under
needs_docs), and the PNG figure (matplotlib, from the tutorials extra; a clear error without it)."""

import builtins
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import refvit
from refvit import parity
from test_parity_bugs import CASES, PLANTED

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--window-size=1280,1800")


@pytest.fixture(scope="module")
def results():
    """A transformer bug (tokens × channels heatmap) and a convolution bug (spatial heatmap), float32."""
    return {bug: parity.compare(*PLANTED[bug][0]("float32")) for bug in ("tanh GELU instead of erf (DeiT)",
                                                                       "no weight standardisation (BiT)")}


def test_html_is_self_contained_and_complete(tmp_path, results):
    for bug, result in results.items():
        path = tmp_path / "r.html"
        parity.write_html(result, path)
        text = path.read_text(encoding="utf-8")
        assert "<script" not in text and not re.search(r'(src|href)="(?!data:)', text)  # no script, nothing fetched
        assert text.count("<svg") == 3 and "first divergence" in text                    # max|Δ|, NMSE, 1 − cosine
        assert f"<code>{result.first_divergence.name}</code>" in text
        assert "LIKELY CAUSE:</b> " + result.likely_cause.cause.replace("'", "&#x27;") in text
        assert 'src="data:image/png;base64,' in text                                    # the |Δ| heatmap
        assert ("tokens × channels" if "DeiT" in bug else "height × width") in text
        assert "introduced</td>" in text and "inherited</td>" in text                    # the blocks table
        assert text.count("<tr>") >= len(result.rows)


def test_ok_report_has_no_divergence_section(tmp_path):
    ref = parity.from_golden(CASES / "deit_teacher")
    result = parity.compare(ref, ref)
    parity.write_html(result, tmp_path / "ok.html")
    text = (tmp_path / "ok.html").read_text(encoding="utf-8")
    assert ">OK<" in text and "First divergence" not in text and "base64" not in text


def test_plot_png_and_its_error_without_matplotlib(tmp_path, results, monkeypatch):
    result = results["tanh GELU instead of erf (DeiT)"]
    parity.write_plot(result, tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(refvit.InputError, match="--plot needs matplotlib"):
        parity.write_plot(result, tmp_path / "f.png")


def test_cli_report_and_plot(tmp_path, results):
    ref, cand = PLANTED["tanh GELU instead of erf (DeiT)"][0]("float32")
    ref.save(tmp_path / "ref.safetensors")
    cand.save(tmp_path / "cand.safetensors")
    run = [sys.executable, "-m", "refvit.cli", "compare", str(tmp_path / "ref.safetensors"),
           str(tmp_path / "cand.safetensors")]
    r = subprocess.run(run + ["--report", str(tmp_path / "r.html"), "--plot", str(tmp_path / "e.png")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and (tmp_path / "r.html").stat().st_size > 10_000 and (tmp_path / "e.png").is_file()
    r = subprocess.run(run + ["--report", str(tmp_path / "no" / "r.html")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.needs_docs
def test_report_renders_in_chromium(tmp_path, results):
    """Headless Debian chromium opens the file: no console error, no request, a screenshot that is not blank."""
    selenium = pytest.importorskip("selenium")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"needs Debian's chromium + chromium-driver ({', '.join(missing)} missing)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path = tmp_path / "report.html"
    parity.write_html(results["tanh GELU instead of erf (DeiT)"], path)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(path.as_uri())
        deadline = time.monotonic() + 20
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert driver.execute_script("return document.images.length && document.images[0].naturalWidth") > 0
        assert driver.execute_script("return document.querySelectorAll('svg polyline').length") >= 3
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    not_white = np.mean(np.any(pixels < 235, axis=-1))
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert not_white > 0.03 and colours > 20, (not_white, colours)   # text, curves and the heatmap drawn
    if os.environ.get("REFVIT_CI_ARTIFACTS"):
        import shutil

        shutil.copy(shot, os.path.join(os.environ["REFVIT_CI_ARTIFACTS"], "compare-report.png"))
