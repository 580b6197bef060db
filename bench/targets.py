"""Every target side by side for ``make bench``: the digits CNN built for cpu, jetson, arm and mcu, each
artifact run on its real runtime on this host against the torch model, saved as results JSON and rendered to the
HTML report (``edgec report``) beside BENCHMARKS.md.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.section import build_for_bench

#: (profile, precisions) built for the suite: one profile per backend.
TARGETS = (
    ("cpu", ("fp32", "fp16", "int8")),
    ("jetson", ("fp16", "int8")),
    ("rpi5", ("fp32", "fp16", "int8")),
    ("cortex-m55-ethos-u55-128", ("int8",)),
)


def run(
    out_html: Path, quick: bool = False, work: Path | None = None, report: Callable[[str], None] = print
) -> str:
    """Build, bench, and write ``out_html`` (and its results JSON beside it); returns the Markdown section."""
    import torch

    from edgec.benchmarks.harness import bench_artifacts
    from edgec.benchmarks.htmlreport import write_report
    from edgec.benchmarks.report import markdown_table
    from edgec.compiler.modelio import one_torch_thread, torch_run
    from edgec.demo import write_demo
    from edgec.recipe import Recipe
    from edgec.targets.registry import availability, resolve_target

    work = Path(work or tempfile.mkdtemp(prefix="edgec-bench-targets-"))
    report("[targets] training the digits CNN")
    with one_torch_thread():  # a small net: on a busy machine extra threads mostly spin
        paths = write_demo(work, epochs=4 if quick else 12)
    targets, artifacts, skipped = [], [], []
    for name, precs in TARGETS:
        ok, why = availability(resolve_target(name).backend)
        if not ok:
            skipped.append(f"{name} ({why})")
            continue
        report(f"[targets] building {name}: {', '.join(precs)}")
        targets.append(name)
        # one build per target: a build's precisions must all suit each of its targets (mcu is INT8 only)
        result, _ = build_for_bench(Recipe(
            checkpoint=str(paths["checkpoint"]), target=[name], precision=list(precs), calib=str(paths["calib"]),
            out=str(work / f"build-{name}"),
        ), report=report)
        artifacts += result.artifacts
    name = artifacts[0].spec.input_names[0]
    with np.load(paths["eval"]) as f:
        x = f[f.files[0]]
    n = 60 if quick else len(x)
    feeds = [{name: x[i:i + 1]} for i in range(n)]
    labels = np.load(paths["eval_labels"])[:n]
    module = torch.export.load(str(paths["checkpoint"])).module()

    def reference(feed):
        return {artifacts[0].spec.outputs[0].name: torch_run(module, feed, [name])[0]}

    report(f"[targets] benchmarking {len(artifacts)} artifacts on {n} samples")
    results = bench_artifacts(
        artifacts, feeds, reference=reference, reference_name="torch (digits_cnn.pt2)", labels=labels,
        iterations=30 if quick else 200, progress=report, data_source="digits held-out set",
    )
    json_path = results.to_json(out_html.with_suffix(".json"))
    write_report([json_path], out_html, None, "edgec: every target on the digits CNN")
    lines = [
        "## Every target on the digits CNN",
        "",
        f"Built with `edgec build digits_cnn.pt2 --target T ...` for T in {', '.join(targets)}; each artifact ran on "
        f"its own runtime on this host, against the torch model on {n} held-out digits. "
        + "".join(f"{note} " for note in runtime_notes(results.runs))
        + f"Plots: [{out_html.name}]({out_html.name}) (`edgec report {json_path.name} --html {out_html.name}`).",
        "",
        markdown_table(results),
    ]
    if skipped:
        lines += [f"Not built (unavailable here): {', '.join(skipped)}.", ""]
    return "\n".join(lines)


def runtime_notes(runs: list[Any]) -> list[str]:
    """What the runtimes the runs recorded make of their figures: a TensorRT artifact timed off its device is an
    ONNX Runtime estimate, an mcu artifact runs in tflite-micro's host interpreter."""
    notes = []
    tensorrt = [r for r in runs if r.target == "tensorrt"]
    estimated = [r.name for r in tensorrt if "estimate" in r.runtime]
    if estimated:
        notes.append(f"{', '.join(estimated)} ran on ONNX Runtime here, as the off-device estimate their recorded "
                     "runtime names: their figures are an estimate of accuracy, not of Jetson latency.")
    on_device = [f"{r.name} on {r.runtime}" for r in tensorrt if "estimate" not in r.runtime]
    if on_device:
        notes.append(f"TensorRT artifacts ran on TensorRT here: {', '.join(on_device)}.")
    if any(r.target == "tflm" for r in runs):
        notes.append("The mcu artifact runs in tflite-micro's host interpreter (its latency says nothing of a "
                     "Cortex-M).")
    return notes


if __name__ == "__main__":
    print(run(Path("BENCHMARKS.html"), quick="--quick" in sys.argv, report=lambda m: print(m, file=sys.stderr)))
