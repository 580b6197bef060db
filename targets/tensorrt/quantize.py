"""INT8 QDQ ONNX in TensorRT's flavour, made from the shared calibration statistics (no data is read again).

TensorRT's explicit quantization wants: signed int8, symmetric (zero point 0), weights per output channel,
no int32 bias DequantizeLinear, and Q/DQ on the inputs of Conv/ConvTranspose/Gemm/MatMul and of residual
Adds, nowhere else (TensorRT fuses Relu, pooling and the residual Add into the int8 kernels itself).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgec.compiler.errors import QuantizationError, missing_dependency
from edgec.compiler.onnxutil import MIN_OPSET, WEIGHTED_OPS, graph_structure, name_nodes, opset_of, save_model
from edgec.compiler.types import CalibrationStats
from edgec.targets.qdq import quantize_qdq, smooth_for_int8, with_smoothed_ranges


def constant_names(model: Any) -> set[str]:
    """Tensors whose value is fixed at build time: initializers and Constant outputs."""
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def is_residual_add(node: Any, constants: set[str]) -> bool:
    """An Add of two computed tensors (a skip connection), not a bias or constant offset."""
    return node.op_type == "Add" and len(node.input) == 2 and not (set(node.input) & constants)


def nodes_to_quantize(model: Any, keep_float: tuple[str, ...] = ()) -> tuple[list[str], list[str], str]:
    """The nodes whose inputs get Q/DQ, the weighted and residual nodes left float, and why. Weighted ops and residual Adds, except: nodes after the last
    weighted layer (a detector's decoding) and ``keep_float`` stay float (FP32 islands; a strongly typed engine
    runs them as the ONNX types them); in an attention model only the weighted MatMul/Gemm layers are quantized
    (Softmax, LayerNorm, the residual stream and attention MatMuls of two activations keep their range)."""
    constants = constant_names(model)
    structure = graph_structure(model)
    skip = set(structure.tail) | set(keep_float)
    candidates = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS or is_residual_add(n, constants)]
    if structure.is_attention_model:
        selected = [n for n in structure.weighted if n not in skip]
        rule = "attention model: weighted MatMul/Gemm only"
    else:
        selected = [n for n in candidates if n not in skip]
        rule = "weighted layers and residual Adds"
    return selected, [n for n in candidates if n not in selected], rule


def quantize_tensorrt(src: Path, out: Path, stats: CalibrationStats, per_channel: bool = True,
                      keep_float: tuple[str, ...] = (), smooth_alpha: float = 0.0) -> dict[str, Any]:
    """Write ``out``, the TensorRT-flavoured QDQ model of ``src``; returns what the metadata records. An attention
    model is smoothed first (``smooth_alpha``, when the calibration took per-channel maxima)."""
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "onnx", "INT8 quantization for TensorRT") from None
    model = onnx.load(str(src))
    opset = opset_of(model)
    name_nodes(model)
    selected, left_float, rule = nodes_to_quantize(model, keep_float)
    if not selected:
        why = (f"with {len(keep_float)} layer(s) kept in float nothing of '{src.name}' is left to quantize"
               if left_float else
               f"'{src.name}' has no Conv, ConvTranspose, Gemm, MatMul or residual Add to quantize")
        raise QuantizationError(why, hint="build fp16 for this model: INT8 would change nothing on TensorRT")
    with tempfile.TemporaryDirectory(prefix="edgec-trt-q-") as tmp:
        named = Path(tmp) / "named.onnx"
        save_model(model, named)
        smoothed, smoothing = smooth_for_int8(named, stats, smooth_alpha, named)
        if smoothed:
            stats = with_smoothed_ranges(stats, smoothed, Path(tmp))
        quantize_qdq(
            stats,
            named,
            out,
            activation="int8",
            per_channel=per_channel,
            reduce_range=False,
            op_types=[*WEIGHTED_OPS, "Add"],
            nodes=selected,
            extra={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                # Inputs only: TensorRT fuses the rest, and a quantized model output would round the logits.
                "OpTypesToExcludeOutputQuantization": [*WEIGHTED_OPS, "Add"],
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            },
            purpose="TensorRT INT8 quantization",
        )
    return {
        "quantization": "QDQ",
        "flavour": "S8S8 symmetric (TensorRT explicit quantization)",
        "per_channel": per_channel,
        "quantized_nodes": len(selected),
        "selection": rule,
        "float_islands": left_float,
        "kept_float": sorted(keep_float),
        "opset": max(opset, MIN_OPSET),
        "calibration_method": stats.method,
        "calibration_samples": stats.samples,
        "smoothing": smoothing,
    }
