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
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import quiet_tools
from bench.models import NAMES, BenchModel, load_model

MISSING = "–"
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
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")
BUILD_TIME_MODEL = "resnet18"

# The targets of the performance issue: INT8 latency / ORT FP32 latency, per model.
LATENCY_TARGETS = {"resnet18": 0.35, "mobilenetv2": 0.55}
MIN_AGREEMENT = 99.5
MAX_DROP = 0.5
MAX_BUILD_RATIO = 1.3

HOW_MEASURED = (
    "Batch 1, one intra-op thread everywhere: ONNX Runtime's CPUExecutionProvider at ORT_ENABLE_ALL "
    "(inter-op 1), torch eager with `torch.set_num_threads(1)` under `no_grad`. All rows of a model are "
    "timed side by side: {s.rounds} round-robin rounds, each timing every row for about {s.budget_s:g} s "
    "({s.min_iterations}–{s.max_iterations} calls, one untimed call first; the order rotates each round) "
    "on one fixed calibration sample. p50 ms is the median of the per-round p50s, p50 range their lowest "
    "and highest; the ratio is the median over rounds of the row's p50 divided by ORT FP32's p50 in the "
    "same round, so slow spells of this shared machine hit both sides. int8 kernels fused: int8 kernels "
    "against float Conv/MatMul/Gemm left in ONNX Runtime's optimized graph (`fusion_report`). Peers run "
    "with their defaults: `quantize_static` (QDQ, S8S8, per-tensor, MinMax) and `nncf.quantize` (ONNX "
    "backend, mixed preset, fast bias correction), on the FP32 ONNX file edgec exported. Accuracy (digits"
    " only): each row over the 360 held-out images, top-1 agreement with ORT FP32, accuracy on the "
    "labels, drop = ORT FP32 accuracy minus the row's."
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to measure: ``rounds`` round-robin passes, each timing every row for ``budget_s`` seconds."""

    rounds: int
    budget_s: float
    min_iterations: int
    max_iterations: int
    warmup: int
    build_rounds: int

    @classmethod
    def full(cls) -> Settings:
        return cls(rounds=15, budget_s=1.0, min_iterations=10, max_iterations=2000, warmup=3, build_rounds=4)

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=3, budget_s=0.05, min_iterations=3, max_iterations=200, warmup=2, build_rounds=1)


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


@dataclasses.dataclass
class Check:
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:limit]


def _quiet():
    return quiet_tools("", "nncf")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    from edgec.benchmarks.results import cpu_model
    from edgec.targets.onnxruntime.target import resolve_reduce_range

    flags: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    reduce_range, why = resolve_reduce_range("auto")
    versions = {}
    for pkg in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        "cpu_start": _cpu_seconds(),
    }


def _cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the machine (/proc/stat) and of this process and its children; None off Linux."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    return busy, own


def _others(machine: dict[str, Any]) -> str:
    """How many cores other processes kept busy on average while the suite ran: the noise in the figures."""
    start, end, wall = machine.get("cpu_start"), machine.get("cpu_end"), machine.get("wall_s")
    if not (start and end and wall):
        return "not measured"
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / wall
    return f"{others:.2f} of {machine['cores']} cores busy on average (from /proc/stat, less this process)"


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
        with _quiet():
            row.path = make()
    except Exception as exc:  # a peer's failure is a result to report, not a reason to stop the suite
        row.error = f"quantization failed: {_one_line(exc)}"
        return row
    try:
        row.infer = _ort_infer(row.path)
        row.fusion = fusion_report(row.path)
    except Exception as exc:
        row.infer = None
        row.error = f"ONNX Runtime (ORT_ENABLE_ALL) cannot run it: {_one_line(exc)}"
    return row


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def build_with_edgec(bm: BenchModel, work: Path) -> tuple[Path, Path | None, str | None, dict[str, Any]]:
    """edgec build (cpu, fp32 and int8, no cache): the FP32 and INT8 files, an INT8 error, the manifest."""
    from edgec import api
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
        return api.build(recipe, cache_dir=work / "cache")

    try:
        result = run(["fp32", "int8"], work / "edgec")
    except EdgecError as exc:
        # The INT8 row reports the failure; the FP32 row (the baseline of every ratio) is built alone.
        error = f"edgec build failed: {_one_line(exc)}"
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
    with _quiet():
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
    iterations = {}
    for r in rows:
        for _ in range(settings.warmup):
            r.infer(x)
        guess = _p50_of_calls(r.infer, x, 3)
        iterations[r.key] = int(
            min(
                settings.max_iterations,
                max(settings.min_iterations, settings.budget_s * 1000 / max(guess, 1e-3)),
            )
        )
    for i in range(settings.rounds):
        shift = i % len(rows)
        for r in rows[shift:] + rows[:shift]:
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
    with _torch_threads(1):  # training and BatchNorm settling: one thread is several times faster here
        bm = load_model(name)
    result = prepare_rows(bm, work / name)
    say(f"{name}: timing {sum(r.ok for r in result.rows)} rows, {settings.rounds} rounds")
    with _torch_threads(1):
        measure_latency(result, settings)
        measure_accuracy(result)
    result.build_info["model_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------- build time


def raw_steps(bm: BenchModel, work: Path, reduce_range: bool) -> tuple[float, float]:
    """What edgec build wraps, called directly: the dynamo export, then quantize_static with calibration.

    The quantizer gets edgec's cpu settings (U8S8 QDQ, per-channel, the same reduce_range), so the two
    routes do the same work.
    """
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32, int8 = work / "raw.fp32.onnx", work / "raw.int8.onnx"
    t0 = time.perf_counter()
    with _quiet():
        torch.onnx.export(
            bm.module, (torch.from_numpy(bm.calib[:1]),), str(fp32), dynamo=True, opset_version=18
        )
    t1 = time.perf_counter()
    with _quiet():
        quantize_static(
            str(fp32),
            str(int8),
            _Reader(_input_name(fp32), bm.calib_feeds()),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
        )
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def edgec_build_int8(work: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of api.build (int8 only, cache off, a fresh cache folder) and its stages' seconds."""
    from edgec import api
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
        result = api.build(recipe, cache_dir=cache)
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


def measure_build_time(bm: BenchModel, work: Path, settings: Settings, reduce_range: bool) -> BuildTiming:
    """edgec build (in-process, cache off) against its raw steps, alternated over ``build_rounds`` rounds.

    The measured build keeps torch at the thread count the process started with, as `edgec build` does. A
    second build per round runs with torch at one thread, to show how much of the gap is torch's threading.
    """
    import torch

    threads = torch.get_num_threads()
    t = BuildTiming([], [], [], [], [], None, "", threads)
    for i in range(settings.build_rounds):
        say(f"build time: round {i + 1}/{settings.build_rounds}")
        export_s, quantize_s = raw_steps(bm, work, reduce_range)
        t.raw_export_s.append(export_s)
        t.raw_quantize_s.append(quantize_s)
        wall, stages = edgec_build_int8(work, work / "timed-build")
        t.edgec_s.append(wall)
        t.edgec_stages.append(stages)
        with _torch_threads(1):
            t.edgec_1t_s.append(edgec_build_int8(work, work / "timed-build")[0])
    say("build time: the edgec console script")
    t.cli_s, t.cli_note = edgec_build_cli(work, work / "cli-build")
    return t


# ------------------------------------------------------------------------------------------------ targets


def _fmt(v: float | None, spec: str) -> str:
    return MISSING if v is None else format(v, spec)


def check_targets(results: dict[str, ModelResult], build: BuildTiming | None) -> list[Check]:
    checks = []
    for name, limit in LATENCY_TARGETS.items():
        target = f"edgec INT8 latency <= {limit:.2f}x ORT FP32 ({name})"
        res = results.get(name)
        if res is None:
            checks.append(Check(target, "not measured in this run", None))
            continue
        row = res.row("edgec_int8")
        checks.append(
            Check(
                target,
                f"{_fmt(row.ratio, '.3f')}x" if row.ok else row.error or "failed",
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
                _fmt(row.agreement, ".2f") + "%",
                row.agreement is not None and row.agreement >= MIN_AGREEMENT,
            )
        )
        checks.append(
            Check(
                f"digits: edgec INT8 accuracy drop <= {MAX_DROP} pts",
                _fmt(row.drop, "+.2f") + " pts",
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
            cells = [r.label, _fmt(r.p50_ms, ".3f"), spread, _fmt(r.ratio, ".3f"), r.fused_cell()]
            if result.model.has_accuracy:
                cells += [_fmt(r.agreement, ".2f"), _fmt(r.accuracy, ".2f"), _fmt(r.drop, "+.2f")]
        body.append(cells)
    return header, body


def _md_table(header: list[str], body: list[list[str]], numeric: bool = True) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    rule = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def _text_table(header: list[str], body: list[list[str]], numeric: bool = True) -> str:
    # A failure message is long: it runs past its column rather than widening the whole table.
    table = [header, *(r for r in body if not r[1].startswith("failed"))]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i and numeric and not c.startswith("failed") else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


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


def _verdict(c: Check) -> str:
    return "not measured" if c.passed is None else ("PASS" if c.passed else "FAIL")


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
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in machine["flags"].items())
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    out = [
        "# edgec benchmarks",
        "",
        f"Produced by `{command}` on {started.strftime('%Y-%m-%d %H:%M %Z')} in {runtime_s / 60:.1f} min. "
        "Regenerate with `make bench`; every figure below comes from that one run.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} logical cores; flags: {flags}",
        f"- edgec's cpu target on this host: reduce_range={machine['reduce_range']} "
        f"({machine['reduce_range_reason']})",
        f"- OS: {machine['platform']}; Python {machine['python']}",
        f"- Other processes during the run: {_others(machine)}",
        f"- Versions: {versions}",
        "",
        "## Targets",
        "",
        _md_table(
            ["target", "measured", "result"],
            [[c.target, c.measured, _verdict(c)] for c in checks],
            numeric=False,
        ),
        "",
    ]
    for res in results.values():
        bm = res.model
        header, body = table_rows(res)
        out += [
            f"## {bm.title}",
            "",
            f"{bm.note}. Calibration: {bm.calib_note}, the same samples for edgec and both peers. "
            f"edgec build (fp32 + int8, no cache) took {res.build_info['build_s']:.1f} s "
            f"(stages: {stage_seconds(res.build_info['manifest'])}).",
            "",
            _md_table(header, body),
            "",
        ]
    if build is not None:
        header, body = build_table(build)
        out += [
            f"## Build time ({results[BUILD_TIME_MODEL].model.title}, int8 only)",
            "",
            f"{len(build.edgec_s)} alternating round(s) in one process, after the model sections "
            f"(imports warm). The measured build keeps torch at {build.torch_threads} thread(s), as the "
            "process started; the diagnostic row repeats it with `torch.set_num_threads(1)`. The raw "
            "quantizer gets edgec's cpu settings (U8S8 QDQ, per-channel, same reduce_range). "
            "The console script row: " + build.cli_note + ".",
            "",
            _md_table(header, body),
            "",
            "edgec's stages in the measured build (median s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in build.stage_medians().items())
            + ". A build also saves the model, writes the manifest and copies the artifacts.",
            "",
        ]
    out += [
        "## How measured",
        "",
        HOW_MEASURED.format(s=settings),
        "",
    ]
    return "\n".join(out)


def render_text(results: dict[str, ModelResult], build: BuildTiming | None, checks: list[Check]) -> str:
    out = []
    for res in results.values():
        out += [res.model.title, _text_table(*table_rows(res)), ""]
    if build is not None:
        out += ["edgec build vs raw steps", _text_table(*build_table(build)), ""]
    out += [
        "targets",
        _text_table(
            ["target", "measured", "result"],
            [[c.target, c.measured, _verdict(c)] for c in checks],
            numeric=False,
        ),
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- main


def parse_models(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {','.join(NAMES)}")
    return list(dict.fromkeys(names))


def run_suite(models: list[str], settings: Settings, work: Path, build_time: bool = True) -> dict[str, Any]:
    machine = machine_info()
    results = {}
    for name in models:
        results[name] = run_model(name, work, settings)
    build = None
    if build_time and BUILD_TIME_MODEL in results:
        build = measure_build_time(
            results[BUILD_TIME_MODEL].model, work / BUILD_TIME_MODEL, settings, machine["reduce_range"]
        )
    machine["cpu_end"] = _cpu_seconds()
    return {"machine": machine, "results": results, "build": build, "checks": check_targets(results, build)}


def _command_line(args: list[str]) -> str:
    """The command as typed: the interpreter relative to the current folder when inside it, NNCF_CI if set."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    env = f"NNCF_CI={shlex.quote(os.environ['NNCF_CI'])} " if "NNCF_CI" in os.environ else ""
    return f"{env}{exe} -m bench.suite {' '.join(shlex.quote(a) for a in args)}".rstrip()


def main(argv: list[str] | None = None) -> int:
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
        "--html", type=Path, help="the HTML report of the every-target section (default: --out with .html)"
    )
    args = parser.parse_args(argv)

    command = _command_line(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    settings = Settings.quick() if args.quick else Settings.full()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edgec-bench-"))
    # A build cache of its own: a figure must never come from an artifact another version of the code wrote.
    os.environ["EDGEC_CACHE_DIR"] = str((work / "cache").resolve())
    try:
        suite = run_suite(args.models, settings, work.resolve(), build_time=not args.no_build_time)
        sections = []
        if not args.no_targets:
            from bench import targets as bench_targets

            html = args.html or args.out.with_suffix(".html")
            sections.append(bench_targets.run(html, quick=args.quick, work=work.resolve() / "targets", report=say))
        if not args.no_tflite:
            from bench import tflite as bench_tflite

            sections.append(bench_tflite.run(quick=args.quick, work=work.resolve() / "tflite", report=say))
        if not args.no_prune:
            from bench import prune as bench_prune

            sections.append(bench_prune.run(quick=args.quick, work=work.resolve() / "prune", report=say))
        if not args.no_harness:
            from bench import harness as bench_harness

            sections.append(bench_harness.run(quick=args.quick, work=work.resolve() / "harness", report=say))
        extra_sections = "\n".join(sections)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    runtime = time.perf_counter() - t0
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
