"""The harness's own figures for ``make bench``: its overhead against a bare ``session.run`` loop, and the
run-to-run spread of ``edgec bench`` with its default settings.

Overhead: in one process, blocks of calls alternate between a bare loop (``perf_counter_ns`` around
``session.run`` on an ONNX Runtime session made with the same settings) and edgec's timing path (the registry's
runner's ``call``, timed by the same ``timed_loop`` ``edgec bench`` uses); overhead = edgec's p50 over all its calls / the
bare loop's p50 - 1 (blocks of about 2 ms, 1 to 20 calls, as many as the time budget allows).

Spread: ``edgec bench BUILD --json -`` runs as separate processes, one after another, with its default settings;
spread is (max - min) / median of the p50 latencies those runs report, per artifact. The control: the same
spread for a bare 100-call ``session.run`` loop, each in its own process, so the machine's own run-to-run
variation shows beside the harness's.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.section import Check, build_for_bench, checks_list
from edgec.benchmarks.report import MISSING, md_table

OVERHEAD_TARGET = 0.03
SPREAD_TARGET = 0.05
MODELS = ("digits", "mobilenetv2")


@dataclasses.dataclass
class HarnessFigures:
    artifact: str
    bare_p50_ms: float
    harness_p50_ms: float
    overhead: float  # median over rounds of harness/bare - 1
    rounds: int
    spread: float | None = None  # (max - min) / median of p50 over separate edgec bench runs
    runs: int = 0
    run_p50s_ms: list[float] = dataclasses.field(default_factory=list)
    bare_spread: float | None = None  # the same for a bare session.run loop in separate processes (the control)
    blocks: int = 0  # blocks of calls timed a side
    block_calls: int = 0  # calls in a block


def measure_overhead(
    artifact: Any, feeds: dict[str, np.ndarray], rounds: int, budget_s: float = 20.0
) -> tuple[float, float, float, int, int]:
    """(bare p50, edgec p50, overhead, blocks a side, calls a block) over up to ``rounds`` x 100 alternating
    blocks of about 2 ms (1 to 20 calls) a side, within ``budget_s`` seconds, one thread.

    edgec's side is its timing path (the registry's runner for the artifact, timed by ``timed_loop`` around
    ``Runner.infer``, as ``edgec bench`` times it); the bare side is ``perf_counter_ns`` around ``session.run``.
    The blocks alternate every few milliseconds because a shared machine can switch between a fast and a slow
    state every second or so (the host this was written on did, 27 vs 53 us per call on the digits CNN in a
    bare loop alone): whole runs side by side would compare the states, not the code.
    """
    from edgec.benchmarks.device import timed_loop
    from edgec.benchmarks.harness import _adapt_feeds, open_runner
    from edgec.compiler.onnxutil import ort_session

    session = ort_session(artifact.path, threads=1)
    names = [o.name for o in session.get_outputs()]
    clock = time.perf_counter_ns
    bare: list[float] = []
    edgec: list[float] = []
    with open_runner(artifact, 1) as runner:
        adapted = _adapt_feeds(feeds, runner.input_specs(), artifact.spec)
        t0 = clock()
        for _ in range(10):
            session.run(names, adapted)
            runner.call(adapted)
        per_call = (clock() - t0) / 20e9
        # Blocks of about 2 ms (1 to 20 calls), as many as fit in the time budget (at least 20 a side).
        size = max(1, min(20, round(0.002 / max(per_call, 1e-7))))
        blocks = max(20, min(rounds * 100, int(budget_s / (2 * size * max(per_call, 1e-7)))))
        for block in range(blocks):
            for side in ((0, 1) if block % 2 == 0 else (1, 0)):
                if side == 0:
                    for _ in range(size):
                        t0 = clock()
                        session.run(names, adapted)
                        bare.append((clock() - t0) / 1e6)
                else:
                    edgec += timed_loop(runner.call, [adapted], warmup=0, iterations=size, duration=None)
    b, e = float(np.median(bare)), float(np.median(edgec))
    return b, e, e / b - 1.0, blocks, size


def measure_spread(build: Path, data: Path, runs: int) -> dict[str, list[float]]:
    """p50 per artifact from ``runs`` separate ``edgec bench`` processes with the default settings."""
    exe = str(Path(sys.executable).with_name("edgec"))
    p50s: dict[str, list[float]] = {}
    for _ in range(runs):
        proc = subprocess.run([exe, "-q", "bench", str(build), "--data", str(data), "--json", "-"],
                              capture_output=True, text=True, check=True)
        for run in json.loads(proc.stdout)["runs"]:
            p50s.setdefault(run["name"], []).append(run["latency"]["p50_ms"])
    return p50s


_BARE = """
import sys, time, numpy as np
from edgec.compiler.onnxutil import ort_session
s = ort_session(sys.argv[1], threads=1)
with np.load(sys.argv[2]) as f:
    x = f[f.files[0]][:1]
feeds = {s.get_inputs()[0].name: x}
names = [o.name for o in s.get_outputs()]
for _ in range(10):
    s.run(names, feeds)
t = []
for _ in range(100):
    t0 = time.perf_counter_ns(); s.run(names, feeds); t.append((time.perf_counter_ns() - t0) / 1e6)
print(float(np.median(t)))
"""


def measure_bare_spread(model: Path, data: Path, runs: int) -> list[float]:
    """p50 of a bare 100-call ``session.run`` loop (10 warm-up) in ``runs`` separate processes: the control."""
    return [
        float(subprocess.run([sys.executable, "-c", _BARE, str(model), str(data)], capture_output=True, text=True,
                             check=True).stdout)
        for _ in range(runs)
    ]


def _build(name: str, work: Path) -> tuple[Path, Path]:
    import torch

    from bench.models import load_model
    from edgec.recipe import Recipe

    bm = load_model(name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "model.pt2"
    example = (torch.from_numpy(bm.calib[:1]),)
    torch.export.save(torch.export.export(bm.module.eval(), example), str(ckpt))
    np.savez(folder / "calib.npz", x=bm.calib)
    data = bm.eval_x[:16] if bm.eval_x is not None else bm.calib[:16]
    np.savez(folder / "data.npz", x=data.astype(np.float32))
    out = folder / "build"
    result, _ = build_for_bench(Recipe(checkpoint=str(ckpt), target=["cpu"], precision=["fp32", "int8"],
                                       calib=str(folder / "calib.npz"), out=str(out),
                                       inputs=[f"x:{'x'.join(map(str, bm.input_shape))}"]))
    return result.out, folder / "data.npz"


def run(quick: bool = False, work: Path | None = None, report: Callable[[str], None] = print) -> str:
    """Measure and return the Markdown section for BENCHMARKS.md."""
    import tempfile

    from edgec.benchmarks.harness import load_build

    rounds, runs = (1, 3) if quick else (3, 10)
    work = Path(work or tempfile.mkdtemp(prefix="edgec-bench-harness-"))
    figures: list[HarnessFigures] = []
    for name in MODELS:
        report(f"[harness] building {name}")
        build, data = _build(name, work)
        artifacts, _ = load_build(build)
        with np.load(data) as f:
            feeds = {"x": f["x"][:1]}
        for artifact in artifacts:
            report(f"[harness] {artifact.name} of {name}: overhead, alternating blocks of calls")
            bare, harness, overhead, blocks, size = measure_overhead(artifact, feeds, rounds,
                                                                     budget_s=3.0 if quick else 20.0)
            figures.append(HarnessFigures(f"{name} {artifact.name}", bare, harness, overhead, rounds,
                                          blocks=blocks, block_calls=size))
        report(f"[harness] {name}: spread over {runs} separate edgec bench runs")
        for artifact_name, p50s in measure_spread(build, data, runs).items():
            fig = next(f for f in figures if f.artifact == f"{name} {artifact_name}")
            fig.run_p50s_ms = p50s
            fig.runs = len(p50s)
            fig.spread = (max(p50s) - min(p50s)) / statistics.median(p50s)
            art = next(a for a in artifacts if a.name == artifact_name)
            bare = measure_bare_spread(Path(art.path), data, runs)
            fig.bare_spread = (max(bare) - min(bare)) / statistics.median(bare)
    return render(figures, quick)


COLUMNS = ("model / artifact", "bare session.run p50 ms", "edgec p50 ms", "overhead",
           "edgec bench p50 per run (ms)", "spread", "bare loop spread (control)")


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.1f}%"


def render(figures: list[HarnessFigures], quick: bool) -> str:
    worst_overhead = max(abs(f.overhead) for f in figures)
    worst_spread = max(f.spread for f in figures if f.spread is not None)
    body = [
        [f.artifact, f"{f.bare_p50_ms:.4f}", f"{f.harness_p50_ms:.4f}", f"{f.overhead * 100:+.2f}%",
         ", ".join(f"{v:.4f}" for v in f.run_p50s_ms), _pct(f.spread), _pct(f.bare_spread)]
        for f in figures
    ]
    checks = [
        Check(f"Overhead within {OVERHEAD_TARGET:.0%} of a bare loop", f"worst {worst_overhead * 100:.2f}%",
              worst_overhead <= OVERHEAD_TARGET),
        Check(f"Run-to-run spread of p50 under {SPREAD_TARGET:.0%}", f"worst {worst_spread * 100:.1f}%",
              worst_spread < SPREAD_TARGET),
    ]
    blocks = "; ".join(f"{f.artifact} {f.blocks} blocks of {f.block_calls} call(s) a side" for f in figures)
    lines = [
        "## Harness overhead and run-to-run spread",
        "",
        md_table(COLUMNS, body, numeric_from=1, text_columns=(4,)),
        "",
        *checks_list(checks),
        "",
        "How: " + " ".join(__doc__.split("\n\n", 1)[1].split()) + f" This run: {blocks}."
        + (" (--quick: too few rounds to quote)" if quick else ""),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(run(quick=args.quick, report=lambda m: print(m, file=sys.stderr)))
