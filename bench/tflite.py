"""The arm (LiteRT) and mcu (TFLite Micro, Ethos-U) targets, measured: ``python -m bench.tflite [--quick]``.

Two models: the digits CNN (trained on scikit-learn's digits, 1x1x8x8, 360 held-out images with labels) and a
MobileNetV2-shaped net at 1x3x96x96 (width 1.0, 100 classes, random weights with BatchNorm statistics settled on
random images; 32 random-normal calibration images, 200 other random-normal images to compare on). Each is saved
as .pt2 and built with ``edgec.api.build``: target rpi5 at fp32, fp16 and int8, and, in a separate build, target
cortex-m55-ethos-u55-128 (int8 only). The peer is ai-edge-quantizer's default static recipe
(``Quantizer(fp32.tflite, recipe.static_wi8_ai8())``, calibrated with ``num_threads=1`` on the same calibration
samples, laid out NHWC like the FP32 file's input), applied to edgec's FP32 .tflite.

Latency: ai-edge-litert's Interpreter with ``num_threads=1`` (its default XNNPACK delegate; the XNNPACK column says how
much of the graph it took), batch 1, one fixed calibration sample already in the file's dtype and layout; one call is ``set_tensor``,
``invoke``, ``get_tensor``. The LiteRT rows of a model are timed side by side in interleaved rounds: each round
times every row for a fixed budget (a few untimed calls first) in an order that rotates each round; p50 is the
median of the per-round p50s, and the ratio is the median over rounds of the row's p50 over LiteRT FP32's p50 in
the same round, so slow spells of a shared machine hit both sides.

Accuracy: every row over the model's evaluation set through edgec's LiteRT runner (float NCHW in, the file's
recorded quantization and layout applied), one thread. Digits: accuracy on the labels, drop = the torch model's
accuracy minus the row's. MobileNetV2 (random weights): top-1 agreement with the torch FP32 model, drop = 100 -
agreement.

MCU: the mcu build's model.int8.tflite runs in tflite-micro's host interpreter (reference kernels) with the arena
the build recorded, and the same file runs in LiteRT (XNNPACK, and its reference kernels as a diagnostic); top-1
agreement and bit-exact int8 outputs over the evaluation set. The arena's true minimum is bisected here again
(tflite-micro's interpreter built and run on a real sample, to one byte) and compared with the recorded arena and
its stated margin. Vela's figures (NPU/CPU ops, cycles, inference time, SRAM) are the build's, for the profile's
Ethos-U55 (128 MACs/cycle) system configuration.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Cpu, versions
from bench.models import BenchModel
from bench.section import Budget, Check, build_for_bench, checks_list, one_line, rotated
from edgec.benchmarks.report import MISSING, md_table, num_cell

ARM_PROFILE = "rpi5"
MCU_PROFILE = "cortex-m55-ethos-u55-128"
MODELS = ("digits", "mobilenetv2")
MNV2_SHAPE = (1, 3, 96, 96)
# 100 classes: width 1.0 with ImageNet's 1000-class head is 3.5 M parameters, its INT8 file 96% of the 4 MiB
# flash budget of the Ethos-U55 profile; with 100 classes it is 2.35 M (a 2.7 MiB INT8 file).
MNV2_CLASSES = 100
MNV2_CALIB = 32
MNV2_EVAL = 200
MNV2_TFLM_EVAL = 40  # TFLM's reference kernels take a fraction of a second per 96x96 MobileNetV2 inference
DIGITS_EPOCHS = 15
SEED = 0

# The targets of the benchmarks issue.
MAX_INT8_DROP = 0.5  # points of digits accuracy, edgec INT8 (LiteRT) vs the torch model
MIN_TFLM_AGREEMENT = 100.0  # % top-1 agreement, TFLM vs LiteRT on the same INT8 file
MIN_NPU_FRACTION = 1.0  # of a plain CNN's ops on the Ethos-U NPU

ROWS = (
    ("fp32", "edgec LiteRT FP32"),
    ("fp16", "edgec LiteRT FP16"),
    ("int8", "edgec LiteRT INT8"),
    ("peer", "peer: ai-edge-quantizer static_wi8_ai8"),
)


FULL = Budget(rounds=15, seconds=0.25, min_iterations=10, max_iterations=5000, warmup=3)
QUICK = Budget(rounds=4, seconds=0.04, min_iterations=3, max_iterations=500, warmup=2)


@dataclasses.dataclass
class Row:
    key: str
    label: str
    path: Path | None = None
    ios: tuple[list[Any], list[Any]] | None = None  # (inputs, outputs) TFLiteIO of the file
    error: str | None = None
    size_bytes: int | None = None
    float_ops: list[str] | None = None  # ops computing in float (INT8 rows)
    ops: int | None = None
    xnnpack: str | None = None  # what the XNNPACK delegate took
    round_p50_ms: list[float] = dataclasses.field(default_factory=list)
    round_ratio: list[float] = dataclasses.field(default_factory=list)
    p50_ms: float | None = None
    ratio: float | None = None
    agreement: float | None = None  # % top-1 agreement with the torch model
    sqnr_db: float | None = None  # of the logits against the torch model's
    accuracy: float | None = None  # % on the labels
    drop: float | None = None  # points


@dataclasses.dataclass
class Mcu:
    """The mcu build of one model, or why there is none."""

    error: str | None = None
    sha_same_as_arm: bool | None = None
    recorded_bytes: int | None = None
    edgec_minimum_bytes: int | None = None
    margin: float | None = None
    bisected_minimum_bytes: int | None = None
    firmware_arena_bytes: int | None = None
    firmware_arena_note: str | None = None
    vela: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    samples: int = 0
    tflm_accuracy: float | None = None
    tflm_drop: float | None = None
    agree_top1: int | None = None  # TFLM vs LiteRT XNNPACK, same file
    bit_exact: int | None = None
    max_lsb: int | None = None
    ties: int | None = None  # disagreements where LiteRT's top-2 margin is within max_lsb
    ref_agree_top1: int | None = None  # TFLM vs LiteRT reference kernels (BUILTIN_REF)
    ref_bit_exact: int | None = None
    ref_max_lsb: int | None = None

    @property
    def arena_limit(self) -> int | None:
        from edgec.targets.tflm.arena import recorded

        if self.bisected_minimum_bytes is None or self.margin is None:
            return None
        return recorded(self.bisected_minimum_bytes, self.margin)


@dataclasses.dataclass
class Result:
    model: BenchModel
    rows: list[Row]
    mcu: Mcu
    torch_accuracy: float | None
    seconds: dict[str, float]

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


# ----------------------------------------------------------------------------------------------------------
# Models


def digits(seed: int = SEED, epochs: int = DIGITS_EPOCHS) -> BenchModel:
    from bench.models import digits_model
    from edgec.compiler.modelio import one_torch_thread

    with one_torch_thread():
        bm = digits_model(seed, epochs)
    return dataclasses.replace(bm, note=f"trained {epochs} epochs; {len(bm.eval_x)} held-out images with labels")


def mobilenetv2_96(seed: int = SEED) -> BenchModel:
    """MobileNetV2's layout at 96x96 (width 1.0, ``MNV2_CLASSES`` classes), random weights, settled BatchNorm."""
    import torch

    from bench.models import _settle_batchnorm, mobilenetv2_shape, random_images
    from edgec.compiler.modelio import one_torch_thread

    with one_torch_thread():
        torch.manual_seed(seed)
        module = mobilenetv2_shape(MNV2_CLASSES)
        _settle_batchnorm(module, MNV2_SHAPE, seed)
    return BenchModel(
        "mobilenetv2", f"MobileNetV2 shape, {'x'.join(map(str, MNV2_SHAPE))}, {MNV2_CLASSES} classes", module,
        MNV2_SHAPE, random_images(MNV2_CALIB, MNV2_SHAPE, seed + 1),
        f"{MNV2_CALIB} random-normal images (seed {seed + 1})",
        eval_x=random_images(MNV2_EVAL, MNV2_SHAPE, seed + 2),
        note=f"random weights; {MNV2_EVAL} other random-normal images (seed {seed + 2}) to compare on",
    )


def load(name: str) -> BenchModel:
    if name == "digits":
        return digits()
    if name == "mobilenetv2":
        return mobilenetv2_96()
    raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")


def torch_outputs(module: Any, x: np.ndarray, batch: int = 50) -> np.ndarray:
    import torch

    from edgec.compiler.modelio import one_torch_thread

    outs = []
    with torch.no_grad(), one_torch_thread():
        for i in range(0, len(x), batch):
            outs.append(module(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(outs)


# ----------------------------------------------------------------------------------------------------------
# Building


def build(model: BenchModel, work: Path, report: Callable[[str], None]) -> tuple[list[Any], Any, str | None]:
    """(rpi5 artifacts, mcu artifact or None, why the mcu build failed)."""
    import torch

    from edgec.compiler.context import quiet_tools
    from edgec.compiler.errors import EdgecError
    from edgec.compiler.modelio import one_torch_thread
    from edgec.recipe import Recipe

    folder = work / model.name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "model.pt2"
    with one_torch_thread():
        example = (torch.from_numpy(model.calib[:1]),)
        torch.export.save(torch.export.export(model.module.eval(), example), str(ckpt))
    calib = folder / "calib.npz"
    np.savez(calib, x=model.calib)
    report(f"[tflite] {model.name}: edgec build --target {ARM_PROFILE} --precision fp32,fp16,int8")
    with quiet_tools(), one_torch_thread():
        arm, _ = build_for_bench(Recipe(checkpoint=str(ckpt), target=[ARM_PROFILE], precision=["fp32", "fp16", "int8"],
                                        calib=str(calib), out=str(folder / f"build-{ARM_PROFILE}")), report=report)
    report(f"[tflite] {model.name}: edgec build --target {MCU_PROFILE} --precision int8")
    try:
        with quiet_tools(), one_torch_thread():
            mcu, _ = build_for_bench(Recipe(checkpoint=str(ckpt), target=[MCU_PROFILE], precision=["int8"],
                                            calib=str(calib), out=str(folder / f"build-{MCU_PROFILE}")), report=report)
    except EdgecError as exc:
        why = f"{type(exc).__name__}: {exc}".replace(str(ckpt), ckpt.name)
        report(f"[tflite] {model.name}: the {MCU_PROFILE} build failed: {why}")
        return arm.artifacts, None, why
    return arm.artifacts, mcu.artifacts[0], None


def peer_quantize(fp32: Any, calib: np.ndarray, out: Path) -> tuple[Path, tuple[list[Any], list[Any]]]:
    """ai-edge-quantizer's static_wi8_ai8 on edgec's FP32 .tflite, calibrated on ``calib`` (NCHW, laid out like
    the FP32 file's input); returns the file and its I/O (the FP32 file's, with the peer's dtypes and scales)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from edgec.targets.litert import TFLiteIO, feeds_to_tflite, quiet_litert

    ins = [TFLiteIO.from_dict(d) for d in fp32.metadata["io"]["inputs"]]
    outs = [TFLiteIO.from_dict(d) for d in fp32.metadata["io"]["outputs"]]
    with quiet_litert():
        interp = Interpreter(model_path=str(fp32.path))
    signatures = interp.get_signature_list()
    (key, sig), = signatures.items()
    # the signature's input names in the order of the file's inputs ("args_0" for "serving_default_args_0")
    names = []
    for io_ in ins:
        match = [n for n in sig["inputs"] if io_.tflite_name.endswith(n)]
        names.append(match[0] if len(match) == 1 else sig["inputs"][len(names)])
    data = {key: [dict(zip(names, feeds_to_tflite(ins, {ins[0].name: calib[i:i + 1]})))
                  for i in range(len(calib))]}
    with quiet_litert():
        q = quantizer.Quantizer(str(fp32.path), recipe.static_wi8_ai8())
        result = q.calibrate(data, num_threads=1)
        quantized = q.quantize(calibration_result=result, enable_progress_report=False)
    out.write_bytes(bytes(quantized.quantized_model))
    with quiet_litert():
        peer = Interpreter(model_path=str(out))
    by_name = {d["name"]: d for d in (*peer.get_input_details(), *peer.get_output_details())}

    def retyped(ios: list[TFLiteIO], fallback: list[dict]) -> list[TFLiteIO]:
        new = []
        for i, io_ in enumerate(ios):
            d = by_name.get(io_.tflite_name) or fallback[i]
            dtype = np.dtype(d["dtype"]).name
            scale, zp = d["quantization"]
            quantized = dtype in ("int8", "uint8", "int16") and scale != 0.0
            new.append(dataclasses.replace(io_, tflite_name=d["name"], dtype=dtype,
                                           scale=float(scale) if quantized else None,
                                           zero_point=int(zp) if quantized else None))
        return new

    return out, (retyped(ins, peer.get_input_details()), retyped(outs, peer.get_output_details()))


# ----------------------------------------------------------------------------------------------------------
# Running


def litert_runner(path: Path, spec: Any, ios: tuple[list[Any], list[Any]], threads: int = 1) -> Any:
    from edgec.targets.tflite.runner import TFLiteRunner

    return TFLiteRunner(path, spec, ios[0], ios[1], threads)


def run_all(runner: Any, x: np.ndarray, name: str) -> np.ndarray:
    """The first output over every sample, one at a time."""
    with runner:
        return np.concatenate([np.asarray(runner.infer({name: x[i:i + 1]})[runner.outputs[0].name])
                               for i in range(len(x))])


def delegated(interp: Any) -> str:
    """How much of the graph LiteRT's default delegate (XNNPACK, the only one on CPU) took: its DELEGATE nodes
    in the interpreter's node list; "whole graph" when one of them produces every model output from the model's
    inputs."""
    try:
        nodes = [o for o in interp._get_ops_details() if o["op_name"] == "DELEGATE"]
    except (AttributeError, KeyError):  # a private method of ai-edge-litert's Interpreter
        return "unknown"
    if not nodes:
        return "no"
    ins = {int(d["index"]) for d in interp.get_input_details()}
    outs = {int(d["index"]) for d in interp.get_output_details()}
    if len(nodes) == 1 and ins <= {int(i) for i in nodes[0]["inputs"]} and outs <= {int(o) for o in nodes[0]["outputs"]}:
        return "whole graph"
    return f"{len(nodes)} partition(s)"


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """10 log10(sum reference^2 / sum (got - reference)^2), over every sample and class."""
    noise = float(np.sum((got.astype(np.float64) - reference) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


class Timed:
    """A .tflite file in ai-edge-litert, one thread, ready to be called on one prepared input."""

    def __init__(self, path: Path, ios: tuple[list[Any], list[Any]], sample: np.ndarray):
        from ai_edge_litert.interpreter import Interpreter

        from edgec.targets.litert import feeds_to_tflite, quiet_litert

        with quiet_litert():
            self.interp = Interpreter(model_path=str(path), num_threads=1)
            self.interp.allocate_tensors()
        self.xnnpack = delegated(self.interp)
        by_name = {d["name"]: d["index"] for d in (*self.interp.get_input_details(),
                                                   *self.interp.get_output_details())}
        arrays = feeds_to_tflite(ios[0], {ios[0][0].name: sample})
        self.inputs = [(by_name[io_.tflite_name], a) for io_, a in zip(ios[0], arrays)]
        self.output = by_name[ios[1][0].tflite_name]

    def __call__(self, _: Any = None) -> Any:
        interp = self.interp
        for index, arr in self.inputs:
            interp.set_tensor(index, arr)
        interp.invoke()
        return interp.get_tensor(self.output)


def time_rows(rows: list[Row], sample: np.ndarray, budget: Budget, report: Callable[[str], None],
              name: str) -> None:
    from edgec.benchmarks.device import timed_loop

    live = [r for r in rows if r.error is None]
    calls = {}
    for r in live:
        calls[r.key] = Timed(r.path, r.ios, sample)
        r.xnnpack = calls[r.key].xnnpack
    report(f"[tflite] {name}: timing {len(live)} LiteRT rows, {budget.rounds} interleaved rounds")
    for k in range(budget.rounds):
        got = {}
        for r in rotated(live, k):
            lat = timed_loop(calls[r.key], [None], warmup=budget.warmup, iterations=budget.max_iterations,
                             duration=budget.seconds, min_iterations=budget.min_iterations)
            got[r.key] = float(np.median(lat))
            r.round_p50_ms.append(got[r.key])
        if "fp32" in got:
            for r in live:
                r.round_ratio.append(got[r.key] / got["fp32"])
    for r in live:
        r.p50_ms = statistics.median(r.round_p50_ms)
        r.ratio = statistics.median(r.round_ratio) if r.round_ratio else None


def bisect_arena(path: Path, feeds: list[np.ndarray], start: int) -> int:
    """The smallest arena (bytes) in which tflite-micro's interpreter is built and runs ``feeds`` once."""
    from tflite_micro import runtime

    from edgec.targets.tflm.arena import captured_stderr

    model = Path(path).read_bytes()

    def runs(size: int) -> bool:
        with captured_stderr():
            try:
                interp = runtime.Interpreter.from_bytes(model, arena_size=size)
                for i, arr in enumerate(feeds):
                    interp.set_input(arr, i)
                interp.invoke()
                return True
            except (RuntimeError, ValueError):
                return False

    hi = max(16, start)
    while not runs(hi):
        hi *= 2
        if hi > 1 << 30:
            raise RuntimeError(f"tflite-micro cannot run '{path}' in any arena")
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if runs(mid):
            hi = mid
        else:
            lo = mid
    return hi


def mcu_figures(artifact: Any, arm_int8: Any, model: BenchModel, reference_acc: float | None, samples: int) -> Mcu:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgec.benchmarks.harness import open_runner
    from edgec.targets.litert import TFLiteIO, feeds_to_tflite, quiet_litert

    meta = artifact.metadata
    ins = [TFLiteIO.from_dict(d) for d in meta["io"]["inputs"]]
    outs = [TFLiteIO.from_dict(d) for d in meta["io"]["outputs"]]
    arena = meta["arena"]
    fig = Mcu(
        sha_same_as_arm=artifact.sha256 == arm_int8.sha256 if arm_int8 is not None else None,
        recorded_bytes=int(arena["recorded_bytes"]), edgec_minimum_bytes=int(arena["minimum_bytes"]),
        margin=float(arena["margin"]), firmware_arena_bytes=int(meta["firmware"]["arena_bytes"]),
        firmware_arena_note=meta["firmware"].get("arena_note"), vela=meta.get("vela"), memory=meta.get("memory"),
    )
    x = model.eval_x[:samples]
    fig.samples = len(x)
    first = feeds_to_tflite(ins, {ins[0].name: x[:1]})
    fig.bisected_minimum_bytes = bisect_arena(artifact.path, first, fig.recorded_bytes)

    # the same file: TFLM with the recorded arena (edgec's runner), LiteRT with XNNPACK and with reference kernels
    with open_runner(artifact) as runner:
        tflm = np.concatenate([np.asarray(runner.infer({ins[0].name: x[i:i + 1]})[outs[0].name])
                               for i in range(len(x))])

    def litert(resolver: Any) -> np.ndarray:
        with quiet_litert():
            interp = Interpreter(model_path=str(artifact.path), num_threads=1, experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
        index = {d["name"]: d["index"] for d in (*interp.get_input_details(), *interp.get_output_details())}
        got = []
        for i in range(len(x)):
            for io_, arr in zip(ins, feeds_to_tflite(ins, {ins[0].name: x[i:i + 1]})):
                interp.set_tensor(index[io_.tflite_name], arr)
            interp.invoke()
            got.append(interp.get_tensor(index[outs[0].tflite_name]).copy())
        return np.concatenate(got)

    def to_int(a: np.ndarray) -> np.ndarray:  # dequantized outputs back to their int8 codes
        o = outs[0]
        return np.rint(a / o.scale + o.zero_point).astype(np.int64) if o.scale else a

    t = to_int(tflm)
    xnn = litert(OpResolverType.AUTO).astype(np.int64)
    ref = litert(OpResolverType.BUILTIN_REF).astype(np.int64)
    xnn, ref = xnn.reshape(len(x), -1), ref.reshape(len(x), -1)
    t = t.reshape(len(x), -1)
    fig.agree_top1 = int((xnn.argmax(1) == t.argmax(1)).sum())
    fig.bit_exact = int((xnn == t).all(1).sum())
    fig.max_lsb = int(np.abs(xnn - t).max())
    top2 = np.sort(xnn, axis=1)[:, -2:]
    fig.ties = int(((xnn.argmax(1) != t.argmax(1)) & (top2[:, 1] - top2[:, 0] <= fig.max_lsb)).sum())
    fig.ref_agree_top1 = int((ref.argmax(1) == t.argmax(1)).sum())
    fig.ref_bit_exact = int((ref == t).all(1).sum())
    fig.ref_max_lsb = int(np.abs(ref - t).max())
    if model.eval_y is not None:
        fig.tflm_accuracy = float((t.argmax(1) == model.eval_y[:len(x)]).mean() * 100)
        if reference_acc is not None:
            fig.tflm_drop = reference_acc - fig.tflm_accuracy
    return fig


def bench_model(name: str, work: Path, budget: Budget, report: Callable[[str], None]) -> Result:
    from edgec.targets.litert import TFLiteIO
    from edgec.targets.tflm.ops import float_ops, model_ops

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    report(f"[tflite] {name}: model")
    model = load(name)
    seconds["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    arm, mcu_artifact, mcu_error = build(model, work, report)
    seconds["edgec builds"] = time.perf_counter() - t0
    by_precision = {a.precision.value: a for a in arm}
    rows = []
    for key, label in ROWS:
        if key == "peer":
            continue
        a = by_precision[key]
        ios = ([TFLiteIO.from_dict(d) for d in a.metadata["io"]["inputs"]],
               [TFLiteIO.from_dict(d) for d in a.metadata["io"]["outputs"]])
        rows.append(Row(key, label, a.path, ios, size_bytes=a.path.stat().st_size))
    t0 = time.perf_counter()
    report(f"[tflite] {name}: peer ai-edge-quantizer static_wi8_ai8")
    peer = Row("peer", dict(ROWS)["peer"])
    try:
        peer.path, peer.ios = peer_quantize(by_precision["fp32"], model.calib,
                                            work / model.name / "peer.static_wi8_ai8.tflite")
        peer.size_bytes = peer.path.stat().st_size
    except Exception as exc:  # a peer may fail; its row says so
        peer.error = one_line(exc)
    rows.append(peer)
    seconds["peer"] = time.perf_counter() - t0
    for r in rows:
        if r.error is None and r.key in ("int8", "peer"):
            r.float_ops = float_ops(r.path)
            r.ops = len(model_ops(r.path))

    t0 = time.perf_counter()
    report(f"[tflite] {name}: outputs over {len(model.eval_x)} samples (torch and every LiteRT row)")
    ref = torch_outputs(model.module, model.eval_x)
    ref_top1 = ref.argmax(1)
    torch_acc = float((ref_top1 == model.eval_y).mean() * 100) if model.eval_y is not None else None
    spec = by_precision["fp32"].spec
    in_name = spec.inputs[0].name
    for r in rows:
        if r.error:
            continue
        logits = run_all(litert_runner(r.path, spec, r.ios), model.eval_x, in_name).reshape(ref.shape)
        r.sqnr_db = sqnr_db(ref, logits)
        got = logits.argmax(1)
        r.agreement = float((got == ref_top1).mean() * 100)
        if model.eval_y is not None:
            r.accuracy = float((got == model.eval_y).mean() * 100)
            r.drop = torch_acc - r.accuracy
        else:
            r.drop = 100.0 - r.agreement
    seconds["accuracy"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    time_rows(rows, model.calib[:1], budget, report, name)
    seconds["latency"] = time.perf_counter() - t0

    mcu = Mcu(error=mcu_error)
    if mcu_artifact is not None:
        t0 = time.perf_counter()
        n = len(model.eval_x) if model.name == "digits" else min(len(model.eval_x), MNV2_TFLM_EVAL)
        report(f"[tflite] {name}: TFLM vs LiteRT on the mcu INT8 file ({n} samples), arena bisection")
        mcu = mcu_figures(mcu_artifact, by_precision.get("int8"), model, torch_acc, n)
        seconds["mcu"] = time.perf_counter() - t0
    return Result(model, rows, mcu, torch_acc, seconds)


# ----------------------------------------------------------------------------------------------------------
# Rendering


LITERT_TOOLS = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer", "tflite-micro", "ethos-u-vela")


def host(cpu: Cpu) -> str:
    """The machine the LiteRT rows ran on (as read during the run), what that makes of the ratios, and the
    versions of the LiteRT tools."""
    found = versions(LITERT_TOOLS)
    tools = ", ".join(f"{d} {found.get(d, '?')}" for d in LITERT_TOOLS)
    where = (f"so the ratios are XNNPACK's on this {cpu.board}" if cpu.raspberry_pi
             else "so the ratios are XNNPACK's on this CPU, not a Raspberry Pi's")
    return f"{cpu.arch} ({cpu.model}), {where}; {tools}"


def _float_cell(r: Row) -> str:
    if r.float_ops is None:
        return MISSING
    if not r.float_ops:
        return f"0/{r.ops}"
    from collections import Counter

    kinds = ", ".join(f"{n} {op}" for op, n in Counter(r.float_ops).items())
    return f"{len(r.float_ops)}/{r.ops} ({kinds})"


def checks(results: list[Result]) -> list[Check]:
    """The targets of the benchmarks issue against this run's figures (passed None: not measurable)."""
    out = []
    by = {r.model.name: r for r in results}
    d = by.get("digits")
    if d is not None:
        int8 = d.row("int8")
        out.append(Check(
            f"digits: edgec INT8 (LiteRT) accuracy drop <= {MAX_INT8_DROP} points vs torch",
            f"{num_cell(d.torch_accuracy, '.2f')}% torch, {num_cell(int8.accuracy, '.2f')}% INT8: drop "
            f"{num_cell(int8.drop, '+.2f')} (peer: {num_cell(d.row('peer').drop, '+.2f')})",
            None if int8.drop is None else int8.drop <= MAX_INT8_DROP,
        ))
    for r in results:
        m = r.mcu
        if m.error or m.agree_top1 is None:
            out.append(Check(f"{r.model.name}: TFLM vs LiteRT top-1 agreement = {MIN_TFLM_AGREEMENT:.0f}%",
                             f"no mcu artifact ({m.error})", None))
            continue
        pct = m.agree_top1 / m.samples * 100
        out.append(Check(
            f"{r.model.name}: TFLM vs LiteRT top-1 agreement = {MIN_TFLM_AGREEMENT:.0f}% (same INT8 file)",
            f"{m.agree_top1}/{m.samples} ({pct:.2f}%); int8 outputs bit-exact in {m.bit_exact}/{m.samples}, "
            f"at most {m.max_lsb} LSB apart; disagreements on a LiteRT top-2 margin within that: {m.ties}",
            pct >= MIN_TFLM_AGREEMENT,
        ))
    for r in results:
        m = r.mcu
        if m.error or m.bisected_minimum_bytes is None:
            out.append(Check(f"{r.model.name}: recorded TFLM arena within its margin of the true minimum",
                             "no mcu artifact", None))
            continue
        out.append(Check(
            f"{r.model.name}: recorded TFLM arena within +{m.margin:.0%} (16-byte aligned) of the true minimum",
            f"recorded {m.recorded_bytes} B, minimum bisected here {m.bisected_minimum_bytes} B "
            f"(edgec's: {m.edgec_minimum_bytes} B), limit {m.arena_limit} B: "
            f"+{(m.recorded_bytes / m.bisected_minimum_bytes - 1) * 100:.1f}%",
            m.bisected_minimum_bytes <= m.recorded_bytes <= m.arena_limit,
        ))
    if d is not None:
        v = d.mcu.vela
        target = "digits (plain CNN): 100% of ops on the Ethos-U NPU"
        if v is None:
            out.append(Check(target, f"no vela report ({d.mcu.error})", None))
        else:
            total = v["npu_ops"] + v["cpu_ops"]
            out.append(Check(target, f"{v['npu_ops']}/{total} on the NPU ({v['accelerator']})",
                             v["npu_ops"] / max(1, total) >= MIN_NPU_FRACTION))
    return out


MAIN_COLUMNS = ("model", "row", "file KiB", "float ops (INT8)", "XNNPACK", "LiteRT p50 ms", "ratio to FP32",
                "top-1 agreement with torch", "logit SQNR dB", "accuracy", "drop (points)")
MCU_COLUMNS = ("model", "same file as rpi5 INT8", "arena recorded B", "minimum bisected here B",
               "edgec's minimum B", "over minimum", "firmware arena (vela model) B", "NPU / CPU ops", "vela cycles",
               "vela inference ms", "vela SRAM B", "vela model B", "TFLM accuracy", "TFLM vs LiteRT top-1",
               "bit-exact int8 outputs", "LiteRT reference kernels vs TFLM: top-1, bit-exact")


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}%"


def main_rows(results: list[Result]) -> list[list[str]]:
    """The LiteRT table: the torch reference (when labels give it an accuracy), then every row of each model."""
    body = []
    for res in results:
        short = res.model.name
        if res.torch_accuracy is not None:
            body.append([short, "torch FP32 (reference)", *[MISSING] * 5, "100.00%", MISSING,
                         _pct(res.torch_accuracy), MISSING])
        for r in res.rows:
            if r.error:
                body.append([short, r.label, f"failed: {r.error}", *[""] * 8])
                continue
            body.append([
                short, r.label, f"{r.size_bytes / 1024:.1f}", _float_cell(r), r.xnnpack or MISSING,
                num_cell(r.p50_ms, ".4f"), num_cell(r.ratio, ".3f"), _pct(r.agreement), num_cell(r.sqnr_db, ".1f"),
                _pct(r.accuracy), num_cell(r.drop, "+.2f"),
            ])
    return body


def mcu_rows(results: list[Result]) -> tuple[list[list[str]], list[str]]:
    """The MCU table, and a note for each model whose mcu build failed."""
    body, notes = [], []
    for res in results:
        m = res.mcu
        if m.error:
            body.append([res.model.name, "build failed (below)", *[""] * 14])
            int8 = res.row("int8")
            seen = (f" Its `{ARM_PROFILE}` INT8 file shows the same: {_float_cell(int8)} of its ops compute in float."
                    if int8.float_ops else "")
            notes.append(f"- {res.model.name}: the `{MCU_PROFILE}` build fails, so it has no mcu figures: "
                         f"{m.error}.{seen}")
            continue
        v = m.vela or {}
        over = (m.recorded_bytes / m.bisected_minimum_bytes - 1) * 100
        body.append([
            res.model.name, "yes" if m.sha_same_as_arm else "no", str(m.recorded_bytes),
            str(m.bisected_minimum_bytes), str(m.edgec_minimum_bytes), f"+{over:.1f}%", str(m.firmware_arena_bytes),
            f"{v.get('npu_ops', MISSING)} / {v.get('cpu_ops', MISSING)}", str(v.get("cycles_total", MISSING)),
            f"{num_cell(v.get('inference_time_ms'), '.4f')} @ {v.get('clock_hz', 0) / 1e6:.0f} MHz",
            str(v.get("sram_bytes", MISSING)), str(v.get("optimised_bytes", MISSING)), _pct(m.tflm_accuracy),
            f"{m.agree_top1}/{m.samples}", f"{m.bit_exact}/{m.samples} (max {m.max_lsb} LSB)",
            f"{m.ref_agree_top1}/{m.samples}, {m.ref_bit_exact}/{m.samples} (max {m.ref_max_lsb} LSB)",
        ])
    return body, notes


def render(results: list[Result], budget: Budget, quick: bool, wall_s: float | None = None,
           cpu: Cpu | None = None) -> str:
    """The Markdown section; ``cpu``: the machine the rows ran on, read during the run."""
    mcu_body, notes = mcu_rows(results)
    lines = [
        "## Arm (LiteRT) and MCU (TFLite Micro, Ethos-U) targets",
        "",
        f"edgec's `{ARM_PROFILE}` artifacts (FP32, FP16 weights, INT8 full-integer) and the peer's INT8 "
        "(ai-edge-quantizer's default static recipe on edgec's FP32 .tflite, same calibration samples), run "
        "in LiteRT on this host: batch 1, one thread, XNNPACK. Ratios are to LiteRT FP32 of the same model, "
        f"timed side by side. Host: {host(cpu or Cpu.read())}.",
        "",
        md_table(MAIN_COLUMNS, main_rows(results), numeric_from=2, text_columns=(3, 4)),
        "",
        "Drop: digits, the torch model's accuracy on the labels minus the row's; MobileNetV2 (random weights, no "
        "labels), 100 minus the top-1 agreement with the torch model. Logit SQNR: 10 log10 of the torch logits' energy "
        "over that of the row's error, over all samples. Float ops: the ops of an INT8 file that read "
        "or write a float tensor other than a constant (the mcu target's full-integer check), of all ops.",
        "",
        f"MCU (`{MCU_PROFILE}`): the mcu build's INT8 file in tflite-micro on this host, its arena, and vela's "
        "figures for the Ethos-U55-128.",
        "",
        md_table(MCU_COLUMNS, mcu_body, numeric_from=2, text_columns=(7, 15)),
        "",
        "Targets:",
        "",
        *checks_list(checks(results)),
    ]
    notes += _explain(results)
    if notes:
        lines += ["", "Notes:", "", *notes]
    took = ", ".join(f"{res.model.name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
                     for res in results)
    lines += [
        "",
        "How measured: " + " ".join(__doc__.split("\n\n", 1)[1].split())
        + f" Rounds: {budget.rounds}, {budget.seconds:g} s per row and round ({budget.min_iterations}–"
        f"{budget.max_iterations} calls, {budget.warmup} untimed first). Seconds spent: {took}"
        + (f"; whole section {wall_s:.0f} s" if wall_s is not None else "") + "."
        + (" (--quick: digits only, too few rounds to quote)" if quick else ""),
        "",
    ]
    return "\n".join(lines)


def _explain(results: list[Result]) -> list[str]:
    """Why TFLM and LiteRT differ, when they do."""
    out = []
    for res in results:
        m = res.mcu
        if m.error or m.bit_exact is None or m.bit_exact == m.samples:
            continue
        flips = m.samples - m.agree_top1
        flipped = ("no top-1 flips here" if not flips else
                   f"{flips} flip(s) here, {m.ties} of them where LiteRT's two best int8 logits are within "
                   f"{m.max_lsb} LSB (a tie broken the other way)")
        out.append(
            f"- {res.model.name}: on the same INT8 file, LiteRT's XNNPACK int8 kernels requantize in float and "
            f"TFLM's reference kernels in fixed point, so the int8 outputs of {m.samples - m.bit_exact} of "
            f"{m.samples} samples differ by up to {m.max_lsb} LSB; LiteRT's own reference kernels (no XNNPACK) "
            f"match TFLM bit for bit in {m.ref_bit_exact}/{m.samples}. A top-1 can flip only where the two best "
            f"logits are that close: {flipped}."
        )
    return out


def run(quick: bool = False, work: Path | None = None, report: Callable[[str], None] = print,
        models: tuple[str, ...] | None = None) -> str:
    """Measure and return the Markdown section for BENCHMARKS.md (--quick: digits only, short rounds)."""
    budget = QUICK if quick else FULL
    models = models or (("digits",) if quick else MODELS)
    work = Path(work or tempfile.mkdtemp(prefix="edgec-bench-tflite-"))
    cpu = Cpu.read()
    t0 = time.perf_counter()
    results = [bench_model(name, work, budget, report) for name in models]
    return render(results, budget, quick, time.perf_counter() - t0, cpu)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.tflite", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, short rounds: a smoke test")
    parser.add_argument("--work-dir", type=Path, help="keep the models and builds here")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    args = parser.parse_args()
    chosen = tuple(args.models.split(",")) if args.models else None
    print(run(quick=args.quick, work=args.work_dir, report=lambda m: print(m, file=sys.stderr, flush=True),
              models=chosen))
