"""``edgec sweep`` for ``make bench``: the digits CNN (and, in the full run, the MobileNetV2-shaped net) swept over
prune ratio x precision x calibration method on a local Ray instance, once with one worker and once with two, each
with a build cache of its own; the section gives both wall times, their ratio, and the front of the 2-worker run.

``python -m bench.sweep [--quick]`` prints the section. A program on top of the driver: it imports edgec inside
functions.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SPACE = {"prune": [0.0, 0.25, 0.5], "precision": ["fp32", "int8"],
         "calibration_method": ["minmax", "entropy", "percentile"]}  # 3 + 3 x 3 = 12 points


def _mobilenet(work: Path) -> dict[str, Any]:
    """The MobileNetV2-shaped net (random weights) as a .pt2, with random-normal calibration and evaluation sets."""
    import torch

    from bench.models import imagenet_model, random_images

    model = imagenet_model("mobilenetv2", calib_samples=8)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "mobilenetv2.pt2"
    example = torch.from_numpy(model.calib[:1])
    torch.export.save(torch.export.export(model.module.eval(), (example,)), str(ckpt))
    np.savez(work / "calib.npz", x=model.calib)
    np.savez(work / "eval.npz", x=random_images(16, model.input_shape, 7))
    return {"checkpoint": ckpt, "calib": work / "calib.npz", "eval": work / "eval.npz", "eval_labels": None,
            "factory": "bench.models:mobilenetv2_shape", "title": model.title + " (random weights; drop = 100 - "
            "top-1 agreement with torch)"}


def run(quick: bool = False, work: Path | None = None, report: Callable[[str], None] = print) -> str:
    from edgec.benchmarks.report import md_table
    from edgec.demo import write_demo
    from edgec.recipe import Recipe
    from edgec.sweep import SweepOptions, sweep, table_rows

    work = Path(work or tempfile.mkdtemp(prefix="edgec-bench-sweep-"))
    report("[sweep] training the digits CNN")
    digits = write_demo(work / "digits", epochs=4 if quick else 15)
    models = [{**digits, "factory": "edgec.demo:digits_cnn", "title": "digits CNN, 1x1x8x8 (drop: accuracy on the "
               "held-out labels)"}]
    if not quick:
        models.append(_mobilenet(work / "mobilenetv2"))
    lines = ["## `edgec sweep`: 1 worker against 2", ""]
    for i, m in enumerate(models):
        base = Recipe(checkpoint=str(m["checkpoint"]), calib=str(m["calib"]), model_factory=m["factory"])
        walls, last = {}, None
        for workers in (1, 2):
            options = SweepOptions(**SPACE, workers=workers, iterations=20 if quick else 100)
            out = work / f"sweep-{i}-w{workers}"
            report(f"[sweep] {m['title']}: {workers} worker(s)")
            t0 = time.perf_counter()
            last = sweep(base, options, str(m["eval"]), out, labels=str(m["eval_labels"]) if m["eval_labels"] else
                         None, cache_dir=work / f"cache-{i}-w{workers}", report=report)
            walls[workers] = time.perf_counter() - t0
        header, rows = table_rows(last.trials)
        lines += [
            f"### {m['title']}", "",
            f"{len(last.trials)} configurations on a local Ray instance: {walls[1]:.1f} s with 1 worker, "
            f"{walls[2]:.1f} s with 2 workers (ratio {walls[1] / walls[2]:.2f}), each with an empty build cache of "
            f"its own. The table is the 2-worker run. {last.summary['latency_note']}.", "",
            md_table(header, rows, numeric_from=4, text_columns=(9, 10)), "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv, report=lambda m: print(m, file=sys.stderr)))
