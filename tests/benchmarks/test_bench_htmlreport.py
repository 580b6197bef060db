"""edgec report: Markdown and a self-contained HTML page, rendered in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.benchmarks.harness import bench_artifacts
from edgec.benchmarks.htmlreport import pareto_front, render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 5.0), (2.0, 1.0), (3.0, 0.5), (2.5, 2.0), (1.0, 6.0), (4.0, 0.5)]
    assert pareto_front(points) == [0, 1, 2]


@pytest.fixture(scope="module")
def results_files(tmp_path_factory):
    """Two real bench runs of the fp32 classifier and a lossy copy, saved as JSON like edgec bench --json."""
    from bench_models import classifier_weights, make_artifact, save_classifier

    from edgec.compiler.types import Precision

    d = tmp_path_factory.mktemp("report")
    w, b = classifier_weights()
    noisy = w + np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) * 0.6
    arts = [make_artifact(save_classifier(d / "model.fp32.onnx", w, b)),
            make_artifact(save_classifier(d / "model.int8.onnx", noisy, b), Precision.INT8)]
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, w.shape[0])).astype(np.float32)} for i in range(40)]
    paths = []
    for name in ("host", "device"):
        results = bench_artifacts(arts, feeds, warmup=2, iterations=30, data_source="synthetic")
        paths.append(results.to_json(d / f"{name}.json"))
    return d, paths


def test_report_writes_markdown_and_html_merging_files(results_files, edgec_cli):
    d, paths = results_files
    r = edgec_cli("report", *paths, "--html", d / "out" / "report.html", "--md", d / "out" / "report.md")
    assert r.returncode == 0, r.stderr
    md = (d / "out" / "report.md").read_text()
    assert "## host" in md and "## device" in md and "## Errors per output" in md
    assert md.count("| onnxruntime/int8 [host] |") == 1  # per-output rows are labelled with their file
    page = (d / "out" / "report.html").read_text()
    assert page.count("<svg") == 3  # latency distribution, drop vs latency, drop vs size
    assert "onnxruntime/fp32 [device]" in page and "Pareto" in page and "★" in page
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<script" not in page
    # without --html/--md the Markdown goes to stdout
    r = edgec_cli("report", paths[0])
    assert r.returncode == 0 and r.stdout.startswith("# edgec benchmark report")


def test_report_on_a_file_that_is_not_results_is_a_clear_error(tmp_path, edgec_cli):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = edgec_cli("report", bad, "--html", tmp_path / "r.html")
    assert r.returncode == 3 and "not a benchmark results file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists()


def _render(page: Path, tmp: Path) -> tuple[Path, list[str]]:
    """Screenshot ``page`` in headless Chromium; returns the PNG and the console messages it logged."""
    png = tmp / f"{page.stem}.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / ('profile-' + page.stem)}", "--enable-logging=stderr", "--v=0",
         "--window-size=1000,2400", f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return png, console


@needs_chromium
def test_html_report_renders_in_chromium_without_console_errors(results_files, tmp_path):
    from PIL import Image

    d, paths = results_files
    from edgec.benchmarks.htmlreport import load_results

    page = tmp_path / "report.html"
    page.write_text(render_html(load_results(paths)))
    # The console check can fail: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", "<script>notDefined()</script></body>"))
    _, console = _render(broken, tmp_path)
    assert any("notDefined" in line for line in console), console

    png, console = _render(page, tmp_path)
    assert console == []
    image = Image.open(png).convert("RGB")
    assert image.size == (1000, 2400)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, plots and tables, not a blank page
    # Something is drawn in the plot colours (the first artifact's blue), not only black text on white.
    assert any(abs(r - 0x1F) < 30 and abs(g - 0x77) < 30 and abs(b - 0xB4) < 30 for _, (r, g, b) in colors)
