"""QDQ ONNX models from the shared calibration statistics, with ONNX Runtime's quantizer (no data is read).

Not a target: the onnxruntime target (U8S8 for x86 kernels) and the tensorrt target (S8S8 symmetric for
TensorRT's explicit quantization) each ask for their own flavour from the same ranges file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from edgec.compiler.errors import QuantizationError, missing_dependency
from edgec.compiler.onnxutil import MIN_OPSET, opset_of, raise_opset, save_model
from edgec.compiler.stages.calibrate import ort_method
from edgec.compiler.types import CalibrationStats


def quantize_qdq(
    stats: CalibrationStats,
    src: Path,
    out: Path,
    *,
    activation: str,
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: list[str] | None = None,
    nodes: list[str] | None = None,
    exclude: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    purpose: str = "INT8 quantization",
) -> None:
    """Write ``out``, a QDQ model of ``src`` quantized from ``stats``.

    ``activation`` is "uint8" or "int8"; weights are always int8. Each target passes the flavour it runs
    fastest (``extra`` holds ONNX Runtime's quantizer options, e.g. symmetric activations, no int32 bias);
    ``exclude`` names nodes kept in float.
    """
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError:
        raise missing_dependency("onnxruntime", "onnx", purpose) from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-qdq-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(_at_min_opset(Path(src), Path(tmp), purpose)),
                str(out),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=nodes,
                nodes_to_exclude=exclude,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=ort_method(stats.method),
                calibration_cache_path=str(stats.path),
                extra_options=extra or {},
            )
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"{purpose} of '{Path(src).name}' failed: {' '.join(str(exc).split())[:300]}",
            hint="try --calibration-method minmax, or build fp32/fp16 only",
        ) from None
    finally:
        root.setLevel(level)


def _at_min_opset(src: Path, tmp: Path, purpose: str) -> Path:
    """``src``, or a copy raised to MIN_OPSET: per-channel Q/DQ (the ``axis`` attribute) needs opset 13, and
    ONNX Runtime refuses a per-channel QDQ file at the opset 11/12 that paddle2onnx and older exporters write
    (``InvalidGraph ... bias_DequantizeLinear``)."""
    import onnx

    model = onnx.load(str(src))
    if opset_of(model) >= MIN_OPSET:
        return src
    raised, failed = raise_opset(model)
    if failed is not None:
        raise QuantizationError(
            f"{purpose} of '{src.name}' needs opset {MIN_OPSET} or later (per-channel int8 weights); the file "
            f"has opset {opset_of(model)} and ONNX's version converter failed: {failed}",
            hint=f"re-export the model at opset {MIN_OPSET} or later, or build fp32/fp16 only",
        )
    path = tmp / src.name
    save_model(raised, path)
    return path


def _dynamic_names(nodes: list[str]) -> list[str]:
    """``nodes`` as ONNX Runtime's dynamic quantizer names them: it first rewrites each Gemm ``G`` into a MatMul
    ``G_MatMul`` (+ ``G_Add``) and matches ``nodes_to_exclude`` against the rewritten graph."""
    return [*nodes, *(f"{n}_MatMul" for n in nodes)]


def quantize_dynamic_int8(src: Path, out: Path, *, per_channel: bool = True, reduce_range: bool = False,
                          exclude: list[str] | None = None) -> None:
    """Write ``out``: int8 weights (per output channel) for every MatMul/Gemm with a constant weight, activations
    quantized per call from their own range (ONNX Runtime's dynamic quantization). No calibration data is used:
    what attention models need, whose activation outliers no static range holds."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise missing_dependency("onnxruntime", "onnx", "dynamic INT8 quantization") from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-dyn-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(
                str(_at_min_opset(Path(src), Path(tmp), "dynamic INT8 quantization")), str(out),
                op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel, reduce_range=reduce_range,
                weight_type=QuantType.QInt8, nodes_to_exclude=_dynamic_names(exclude or []),
            )
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"dynamic INT8 quantization of '{Path(src).name}' failed: {' '.join(str(exc).split())[:300]}",
            hint="set target_options: {onnxruntime: {int8_mode: static}} in the recipe, or build fp32/fp16 only",
        ) from None
    finally:
        root.setLevel(level)
