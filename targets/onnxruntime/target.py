"""OnnxRuntimeTarget: FP32 as exported, FP16 with float32 I/O, INT8 as U8S8 QDQ verified to fuse."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgec.compiler.errors import QuantizationError, TargetBuildError, missing_dependency
from edgec.compiler.onnxutil import (
    control_flow_ops,
    graph_structure,
    kernel_counts,
    ort_session,
    save_model,
    topological_sort,
    with_activations,
)
from edgec.compiler.types import Artifact, CalibrationStats, InputSpec, ModelFormat, OnnxModel, Precision, sha256_file
from edgec.targets.base import Target, require_packages
from edgec.targets.onnxruntime.runner import OnnxRuntimeRunner
from edgec.targets.qdq import quantize_dynamic_int8, quantize_qdq, smooth_alpha_option, smooth_for_int8


@dataclasses.dataclass
class OnnxRuntimeOptions:
    int8_activation: str = dataclasses.field(
        default="uint8",
        metadata={
            "help": "activation type of INT8 models: uint8 (U8S8, fused into int8 kernels on x86) or int8 (S8S8)",
            "choices": ("uint8", "int8"),
        },
    )
    per_channel: bool = dataclasses.field(default=True, metadata={"help": "int8 weights per output channel"})
    reduce_range: bool | str = dataclasses.field(
        default="auto",
        metadata={
            "help": "7-bit weights: needed on x86 CPUs without VNNI, whose u8s8 kernels saturate with full-range "
            "weights; auto = on unless the build host has AVX512-VNNI or AVX-VNNI (or is not x86)",
            "choices": ("auto", True, False),
        },
    )
    fp16_keep_io_types: bool = dataclasses.field(
        default=True, metadata={"help": "FP16 models keep float32 inputs and outputs"}
    )
    int8_mode: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "static: QDQ with calibrated activation ranges; dynamic: int8 weights, activations quantized "
            "per call (ONNX Runtime's MatMulInteger); auto = dynamic for attention models (static ranges cannot "
            "hold their outlier channels), static otherwise",
            "choices": ("auto", "static", "dynamic"),
        },
    )
    smooth_alpha: float = smooth_alpha_option()
    keep_float: list = dataclasses.field(
        default_factory=list,
        metadata={"help": "nodes of the FP32 export left in float in INT8 models (the build's accuracy fallback "
                  "fills it; names as `edgec compare` prints them)"},
    )


X86 = ("x86_64", "amd64", "i686", "x86")
_VNNI = (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))


def _x86_flags() -> set[str] | None:
    """The CPU flags of an x86 machine; None off x86 or when they cannot be read."""
    import platform

    if platform.machine().lower() not in X86:
        return None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def host_has_vnni() -> bool | None:
    """Whether this machine's CPU has VNNI dot-product instructions; None when it cannot tell."""
    flags = _x86_flags()
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni"})


def int8_isa(arch: str, flags: frozenset[str] | set[str] | None) -> str:
    """The instructions ONNX Runtime's INT8 kernels can use on a CPU of ``arch`` with ``flags`` (None: not
    readable), e.g. "AVX512-VNNI", "AVX2 without VNNI"; off x86, the architecture."""
    if arch.lower() not in X86:
        return arch
    if flags is None:
        return f"{arch}, CPU flags not readable"
    vnni = [name for flag, name in _VNNI if flag in flags]
    if vnni:
        return " and ".join(vnni)
    return "AVX2 without VNNI" if "avx2" in flags else f"{arch} without AVX2"


def host_int8_isa() -> str:
    """``int8_isa`` of this machine, for the figures a build records."""
    import platform

    return int8_isa(platform.machine() or "unknown CPU", _x86_flags())


def resolve_reduce_range(value: bool | str) -> tuple[bool, str]:
    """The reduce_range to build with, and why."""
    if value != "auto":
        return bool(value), "set by the profile or recipe"
    import platform

    vnni = host_has_vnni()
    if vnni is None and platform.machine().lower() in ("arm64", "aarch64"):
        return False, "auto: arm64 int8 kernels do not saturate"
    if vnni:
        return False, "auto: the build host has VNNI"
    return True, "auto: the build host has no AVX512-VNNI/AVX-VNNI (u8s8 kernels would saturate)"


def fusion_report(path: Path) -> dict[str, Any]:
    """Int8 kernels against float compute ops left in ONNX Runtime's fully optimized graph."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, threads=1, level="all", optimized_path=optimized)
        counts = kernel_counts(onnx.load(str(optimized)))
    counts["fused_fraction"] = round(counts["int8"] / max(1, counts["int8"] + counts["float"]), 4)
    return counts


def _why_nothing(graph: Any, keep: list[str]) -> str:
    """Why quantizing ``graph`` (an FP32 model) with ``keep`` left in float gave no int8 kernel, in words."""
    if keep:
        return f"with {len(keep)} node(s) kept in float nothing is left to quantize"
    control = control_flow_ops(graph)
    if control:
        return (f"its layers sit inside {'/'.join(control)} subgraphs, which ONNX Runtime's quantizer leaves in "
                "float")
    return "it has no Conv, MatMul or Gemm with constant weights"


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    timed_on_host = True
    consumes = ModelFormat.ONNX
    precisions = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})
    Options = OnnxRuntimeOptions
    tools = ("onnx", "onnxruntime")

    @classmethod
    def check_available(cls) -> None:
        require_packages(("onnx", "onnxruntime"), "onnx", "the onnxruntime target")

    def __init__(self, options: OnnxRuntimeOptions | None = None):
        super().__init__(options)
        # Resolved here, not in build(), so the build cache key holds the value actually used.
        self.options.reduce_range, self.reduce_range_reason = resolve_reduce_range(self.options.reduce_range)

    def build(self, model: OnnxModel, precision: Precision, calibration: Any, out_dir: Path) -> list[Artifact]:
        import onnx

        out = out_dir / f"model.{precision.value}.onnx"
        meta: dict[str, Any] = {"runtime": "onnxruntime", "execution_provider": "CPUExecutionProvider"}
        if precision == Precision.FP32:
            shutil.copyfile(model.path, out)
        elif precision == Precision.FP16:
            self._to_fp16(model, out)
            meta["fp16_keep_io_types"] = self.options.fp16_keep_io_types
        else:
            meta.update(self._int8(model, calibration, out))
        if precision != Precision.FP32:  # the FP32 file is the export, checked when it was written
            try:
                onnx.checker.check_model(str(out))
            except Exception as exc:
                control = control_flow_ops(onnx.load(str(model.path), load_external_data=False))
                raise TargetBuildError(
                    f"the {precision.value} model '{out.name}' is invalid: {' '.join(str(exc).split())[:300]}",
                    hint=(f"the model has {'/'.join(control)} subgraphs, which the {precision.value} converter "
                          "mishandles; " if control else "report this with the model; ")
                    + "build -p fp32 for this target meanwhile") from None
        spec = InputSpec(model.spec.inputs, model.spec.outputs)
        return [Artifact(out, ModelFormat.ONNX, precision, self.name, spec, sha256_file(out), meta)]

    def _int8(self, model: OnnxModel, stats: CalibrationStats, out: Path) -> dict[str, Any]:
        """The INT8 file and what the manifest records of it. First tries by structure: attention models get
        dynamic quantization; elsewhere static QDQ leaves the nodes after the last weighted layer (a detector's
        decoding, an encoder's pooling) in float, so one scale never spans boxes and scores."""
        import onnx

        opts = self.options
        graph = onnx.load(str(model.path), load_external_data=False)
        structure = graph_structure(graph)
        mode = opts.int8_mode
        if mode == "auto":
            mode = "dynamic" if structure.is_attention_model else "static"
        keep = sorted(set(with_activations(graph, opts.keep_float)))
        meta: dict[str, Any] = {"quantization": "QDQ" if mode == "static" else "dynamic", "int8_mode": mode,
                                "int8_mode_reason": self._mode_reason(opts.int8_mode, structure)}
        if mode == "dynamic":
            with tempfile.TemporaryDirectory(prefix="edgec-smooth-") as tmp:
                smoothed_path = Path(tmp) / model.path.name
                smoothed, meta["smoothing"] = smooth_for_int8(model.path, stats, opts.smooth_alpha, smoothed_path)
                quantize_dynamic_int8(smoothed_path if smoothed else model.path, out, per_channel=opts.per_channel, reduce_range=opts.reduce_range,
                                      exclude=keep)
            meta.update({"flavour": "dynamic U8S8 (MatMulInteger)", "per_channel": opts.per_channel,
                         "reduce_range": opts.reduce_range, "reduce_range_reason": self.reduce_range_reason})
        else:
            tail = [n for n in structure.tail if n not in keep]
            quantize_qdq(
                stats, model.path, out, activation=opts.int8_activation, per_channel=opts.per_channel,
                reduce_range=opts.reduce_range, exclude=[*keep, *tail],
            )
            meta.update({
                "flavour": "U8S8" if opts.int8_activation == "uint8" else "S8S8",
                "per_channel": opts.per_channel,
                "reduce_range": opts.reduce_range,
                "reduce_range_reason": self.reduce_range_reason,
                "calibration_method": stats.method,
                "calibration_samples": stats.samples,
                "float_tail": len(tail),
            })
        meta["kept_float"] = keep
        meta["fusion"] = fusion_report(out)
        if not meta["fusion"]["int8"]:
            raise QuantizationError(f"the INT8 model runs no int8 kernel on ONNX Runtime: {_why_nothing(graph, keep)}",
                                    hint="build -p fp32 or -p fp16 for this target: INT8 would change nothing")
        return meta

    @staticmethod
    def _mode_reason(asked: str, structure: Any) -> str:
        if asked != "auto":
            return "set by the profile or recipe"
        if structure.is_attention_model:
            return (f"auto: attention model ({len(structure.attention)} Softmax-fed MatMuls): dynamic activation "
                    "ranges")
        return "auto: no attention: static QDQ from the calibration statistics"

    higher_precision = "float32 (left out of quantization, with their activations)"

    def keep_in_higher_precision(self, nodes: list[str]) -> OnnxRuntimeTarget:
        kept = type(self)(dataclasses.replace(self.options, keep_float=sorted({*self.options.keep_float, *nodes})))
        kept.reduce_range_reason = self.reduce_range_reason
        return kept

    def _to_fp16(self, model: OnnxModel, out: Path) -> None:
        import onnx

        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", "FP16 conversion") from None
        m = onnx.load(str(model.path))
        with contextlib.redirect_stdout(io.StringIO()):
            m16 = convert_float_to_float16(m, keep_io_types=self.options.fp16_keep_io_types, disable_shape_infer=False)
        # The converter appends the input Casts at the end of the graph; the ONNX checker wants them first.
        topological_sort(m16)
        save_model(m16, out)

    @classmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> OnnxRuntimeRunner:
        cls.check_available()
        return OnnxRuntimeRunner(artifact.path, threads)
