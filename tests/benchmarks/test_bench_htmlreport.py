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
    # per-output rows (errors, task metrics) are labelled with their file
    assert md.count("| onnxruntime/int8 [host] | logits |") == 2 and "## Task metrics per output" in md
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


# ---------------------------------------------------------------------------------------------------------------
# Task figures and the build's verdict, from real metric computations.


def _bars(svg: str) -> int:
    return svg.count('<rect class="bar"')


def _figures(page: str) -> dict[str, str]:
    """caption -> the SVG of that figure, for every task figure on the page."""
    found = re.findall(r"<figure><figcaption>(.*?)</figcaption>(<svg.*?</svg>)</figure>", page)
    return {html_unescape(caption): svg for caption, svg in found}


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


@pytest.fixture(scope="module")
def task_outputs():
    """40 samples of a binary classifier (labelled), an embedding, a detector and a CTC sequence output; the
    candidate is over-confident, noisy, shifts two images' boxes and drops a token of three sequences."""
    from edgec.benchmarks import postprocess as pp
    from edgec.compiler.tasks import OutputTask
    from test_bench_metrics import ctc_frames, detector_output

    rng = np.random.default_rng(0)
    n = 40
    z = rng.normal(0, 1.5, (n, 1, 2))
    labels = (rng.uniform(size=n) < pp.softmax(z[:, 0], axis=1)[:, 1]).astype(np.int64)  # calibrated reference
    emb = rng.normal(size=(n, 1, 16))
    dets = [detector_output(rng)[0][None] for _ in range(n)]
    seqs = [list(rng.integers(1, 10, 4)) for _ in range(n)]
    ref, cand = [], []
    for i in range(n):
        det = dets[i].copy()
        if i < 2:
            det[0, 0] += 0.3 * det[0, 2]  # boxes moved by 30% of their width: IoU below 0.9
        # the first three drop their third token; the blank (0) at the end keeps the 12 frames
        seq = seqs[i][:2] + seqs[i][3:] + [0] if i < 3 else seqs[i]
        ref.append({"cls": z[i], "emb": emb[i], "det": dets[i], "seq": ctc_frames(seqs[i])})
        cand.append({"cls": 3.0 * z[i], "emb": emb[i] + rng.normal(0, 0.4, (1, 16)), "det": det,
                     "seq": ctc_frames(seq)})
    tasks = [OutputTask("cls", "classification"), OutputTask("emb", "embedding"), OutputTask("det", "detection"),
             OutputTask("seq", "sequence", {"probabilities": False})]
    return ref, cand, labels, tasks


def _run(name, accuracy, build=None, is_reference=False):
    from edgec.benchmarks.latency import summarize
    from edgec.benchmarks.results import RunResult

    return RunResult(name=name, path=f"/b/{name}.onnx", format="onnx", precision=name.split("/")[1], target="cpu",
                     runtime="onnxruntime 1.22.0 (CPUExecutionProvider)", size_bytes=4096, sha256="0" * 64,
                     threads=1, latency=summarize([1.0, 1.1, 1.3, 0.9, 1.2]), accuracy=accuracy, build=build,
                     is_reference=is_reference)


def _verification_metadata(ref, cand, tasks):
    """Artifact metadata as the build writes it: a verdict that failed, a fallback that kept one layer, the
    verdict after it, the latency check and the confidence temperature."""
    from edgec.benchmarks.sensitivity import Attempt, LayerScore
    from edgec.benchmarks.verify import Budget, judge

    emb = [t for t in tasks if t.output == "emb"]
    worse = [{"emb": c["emb"] + np.random.default_rng(5).normal(0, 3.0, (1, 16))} for c in cand]
    before = judge("cpu/int8", emb, ref, worse, Budget(), data="12 held-out calibration samples")
    after = judge("cpu/int8", emb, ref, cand, Budget(max_drop=50.0), data="12 held-out calibration samples")
    assert not before.passed and after.passed
    ranking = [LayerScore("/enc/attn/Softmax", "Softmax", 0.8123, 0.6421, "softmax"),
               LayerScore("/enc/ffn/MatMul", "MatMul", 0.05, 0.01, "matmul")]
    fallback = {"ranking": [s.to_dict() for s in ranking],
                "attempts": [Attempt(["/enc/attn/Softmax"], after).to_dict()], "kept": ["/enc/attn/Softmax"],
                "kept_as": "float32 (left out of quantization, with their activations)"}
    return {"verification": {**after.to_dict(), "budget": Budget(max_drop=50.0).to_dict(),
                             "before_fallback": before.to_dict(), "fallback": fallback},
            "latency_check": {"fp32_ms": 1.0, "ms": 0.62, "ratio": 0.62, "host": "avx512_vnni", "threads": 1},
            "confidence": {"cls": {"temperature": 2.75, "ece_before": 0.2, "ece_after": 0.05}},
            "fusion": {"int8": 3, "float": 1}}


@pytest.fixture(scope="module")
def task_results(task_outputs, tmp_path_factory):
    from edgec.benchmarks.accuracy import compare_outputs
    from edgec.benchmarks.metrics import fit_temperature
    from edgec.benchmarks.results import BenchResults, build_records

    ref, cand, labels, tasks = task_outputs
    temperature = fit_temperature(np.concatenate([c["cls"] for c in cand]), labels, probabilities=False)
    acc = compare_outputs(ref, cand, labels=labels, reference_name="cpu/fp32", tasks=tasks,
                          temperatures={"cls": temperature})
    same = compare_outputs(ref, ref, labels=labels, reference_name="cpu/fp32", tasks=tasks)
    results = BenchResults(runs=[
        _run("cpu/fp32", same, build={"verification": "reference"}, is_reference=True),
        _run("cpu/int8", acc, build=build_records(_verification_metadata(ref, cand, tasks))),
    ], reference="cpu/fp32", samples=len(ref))
    path = results.to_json(tmp_path_factory.mktemp("tasks") / "tasks.json")
    return path, acc


def test_task_figures_are_drawn_from_the_metrics(task_results):
    from edgec.benchmarks.htmlreport import load_results

    path, acc = task_results
    page = render_html(load_results([path]))
    assert "<script" not in page and "Task metrics per output" in page
    figs = _figures(page)
    # the reference compared with itself draws nothing; the candidate one figure per plot its outputs recorded
    assert sorted(figs) == sorted(f"cpu/int8: {c}" for c in (
        "reliability diagram", "precision-recall curve", "cosine per row", "nearest-neighbour agreement",
        "IoU per reference box", "edit distance per sequence"))

    cls = acc.tasks["cls"]
    rel = cls.plots["reliability"]
    svg = figs["cpu/int8: reliability diagram"]
    non_empty = sum(v is not None for v in rel["reference"]["accuracy"]) + sum(
        v is not None for v in rel["candidate"]["accuracy"])
    assert _bars(svg) == non_empty and 0 < non_empty < 30
    assert svg.count('stroke-dasharray="5 4"') == 1  # the diagonal
    assert f"candidate {cls.figures['ece']:.4f}" in svg and f"reference {cls.figures['reference_ece']:.4f}" in svg
    assert cls.figures["ece"] > cls.figures["reference_ece"]  # over-confident candidate
    assert f"T = {cls.figures['temperature']:.3g}: ECE {cls.figures['ece_calibrated']:.4f}" in svg
    assert cls.figures["temperature"] > 1.5  # the 3x over-confident logits are cooled
    assert cls.figures["ece_calibrated"] < cls.figures["ece"]

    pr = figs["cpu/int8: precision-recall curve"]
    points = re.search(r'<polyline class="curve" points="([^"]*)"', pr).group(1).split()
    assert len(points) == len(cls.plots["pr_curve"]["recall"]) > 2 and f"ROC-AUC {cls.figures['roc_auc']:.4f}" in pr

    emb = acc.tasks["emb"]
    assert _bars(figs["cpu/int8: cosine per row"]) == sum(1 for c in emb.plots["cosine_histogram"]["counts"] if c)
    assert f"mean cosine {emb.figures['mean_cosine']:.4f}" in figs["cpu/int8: cosine per row"]
    nn = figs["cpu/int8: nearest-neighbour agreement"]
    assert _bars(nn) == 2 and f"1-NN agreement {emb.figures['nn_agreement']:.1f}%" in nn

    det = acc.tasks["det"]
    iou = figs["cpu/int8: IoU per reference box"]
    counts = det.plots["iou_histogram"]["counts"]
    assert _bars(iou) == sum(1 for c in counts if c) >= 2  # the moved boxes sit in lower bins than the rest
    assert sum(counts) == det.figures["reference_boxes"] and f"matched IoU {det.figures['matched_iou']:.4f}" in iou

    seq = acc.tasks["seq"]
    ed = figs["cpu/int8: edit distance per sequence"]
    assert seq.plots["edit_distances"]["count"][1] == 3 and _bars(ed) == 2  # 37 at distance 0, 3 at 1
    assert "≥10" in ed and f"token error rate {seq.figures['token_error_rate']:.4f}" in ed


def test_build_verification_section_lists_verdict_fallback_and_latency(task_results):
    from edgec.benchmarks.htmlreport import load_results, render_markdown

    path, _ = task_results
    sources = load_results([path])
    run = sources[0][1].by_name("cpu/int8")
    # what reached the results: the verdicts' headline figures, not their plots
    record = run.build["verification"]
    assert record["passed"] and not record["before_fallback"]["passed"]
    assert "plots" not in record["outputs"]["emb"] and set(run.build) == {"verification", "latency_check", "confidence"}
    page = render_html(sources)
    section = page[page.index("<h2>Build verification</h2>"):]
    before, after = record["before_fallback"]["outputs"]["emb"]["drop"], record["outputs"]["emb"]["drop"]
    assert f"drop {before:.2f} -&gt; {after:.2f} pts" in section
    assert "PASS after fallback (FAIL before: emb (embedding)" in section
    assert "0.62x FP32 (avx512_vnni, 1 thread)" in section and "cls T = 2.750" in section
    layers = section[section.index("Layers kept in higher precision"):]
    assert "/enc/attn/Softmax" in layers and "0.8123" in layers and "+0.6421" in layers
    assert "float32 (left out of quantization" in layers
    assert "/enc/ffn/MatMul" not in layers  # ranked, but not kept
    assert "<td class=\"txt\">reference</td>" in section  # the FP32 artifact's record

    md = render_markdown(sources)
    assert "## Task metrics per output" in md and "## Build verification" in md
    task_md = md[md.index("## Task metrics per output"):md.index("## Build verification")]
    cls_row = next(line for line in task_md.splitlines() if line.startswith("| cpu/int8 | cls |"))
    assert cls_row.startswith("| cpu/int8 | cls | classification | accuracy ")  # the headline, then the others
    assert "ece_calibrated" in cls_row and "; accuracy " not in cls_row  # the headline is not repeated
    assert task_md.count("| cpu/int8 | ") == 4 and task_md.count("| cpu/fp32 | ") == 4  # a row per output and run
    build_md = md[md.index("## Build verification"):]
    assert "| cpu/int8 | PASS after fallback" in build_md and "| cpu/int8 | /enc/attn/Softmax | Softmax |" in build_md


def test_results_without_task_data_or_build_records_still_render(results_files, tmp_path):
    """Older results: no 'tasks' in the accuracy and no 'build' in the runs."""
    import json

    from edgec.benchmarks.htmlreport import load_results, render_markdown

    _, paths = results_files
    d = json.loads(paths[0].read_text())
    for run in d["runs"]:
        run.pop("build", None)
        if run["accuracy"]:
            run["accuracy"].pop("tasks", None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    sources = load_results([old])
    assert all(r.build is None and not r.accuracy.tasks for r in sources[0][1].runs)
    page = render_html(sources)
    assert "No task metrics in these results" in page and "Build verification" not in page
    assert "<figure>" not in page and page.count("<svg") == 3
    md = render_markdown(sources)
    assert "## Task metrics per output" not in md and "## Build verification" not in md


def test_bench_carries_the_build_records_of_each_artifact(tmp_path, task_outputs):
    """edgec bench on a build: each run gets its artifact's verification, latency check and confidence."""
    from bench_models import classifier_weights, eval_feeds, make_artifact, save_classifier
    from edgec.benchmarks.results import BenchResults
    from edgec.compiler.types import Precision

    w, b = classifier_weights()
    fp32 = make_artifact(save_classifier(tmp_path / "m.fp32.onnx", w, b))
    int8 = make_artifact(save_classifier(tmp_path / "m.int8.onnx", w * 1.01, b), Precision.INT8)
    ref, cand, _, tasks = task_outputs
    int8.metadata.update(_verification_metadata(ref, cand, tasks))
    fp32.metadata["verification"] = "reference"
    results = bench_artifacts([fp32, int8], eval_feeds(4), warmup=1, iterations=5)
    loaded = BenchResults.from_json(results.to_json(tmp_path / "r.json"))
    run = loaded.by_name("onnxruntime/int8")
    assert run.build["verification"]["fallback"]["kept"] == ["/enc/attn/Softmax"]
    assert run.build["latency_check"]["ratio"] == 0.62 and "fusion" not in run.build
    assert loaded.by_name("onnxruntime/fp32").build == {"verification": "reference"}
    no_records = make_artifact(tmp_path / "m.fp32.onnx")
    assert bench_artifacts([no_records], eval_feeds(2), warmup=0, iterations=3).runs[0].build is None


@needs_chromium
def test_task_figures_render_in_chromium(task_results, tmp_path):
    from PIL import Image

    from edgec.benchmarks.htmlreport import REFERENCE_COLOR, load_results

    path, _ = task_results
    text = render_html(load_results([path]))
    grey = tuple(int(REFERENCE_COLOR[i:i + 2], 16) for i in (1, 3, 5))
    shade = tuple(0.75 * g + 0.25 * 255 for g in grey)  # the reference's bars, 75% opaque on white

    def shaded_pixels(page_text: str, name: str) -> int:
        page = tmp_path / f"{name}.html"
        page.write_text(page_text)
        png, console = _render(page, tmp_path)
        assert console == []
        colors = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)
        return sum(n for n, rgb in colors if all(abs(c - s) < 3 for c, s in zip(rgb, shade)))

    # the reliability diagram's reference bars are drawn: recolouring them takes away that many grey pixels
    drawn, recoloured = shaded_pixels(text, "tasks"), shaded_pixels(text.replace(REFERENCE_COLOR, "#00ff00"), "x")
    assert drawn - recoloured > 1000
