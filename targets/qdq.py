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


#: Smoothing's migration strength: the share of each input channel's range moved into the weights. Chosen by
#: measurement on the real MiniLM encoder with dynamic INT8 (bench.realworld): 0.5 left mean cosine at 0.989,
#: 0.7 to 0.9 gave 0.998 (0.8: 0.9985 and 95.3% nearest-neighbour agreement, against 0.9936 and 91.3% without).
SMOOTH_ALPHA = 0.8
#: Bounds of one channel's scale, so a dead or extreme channel cannot blow up its weights.
SMOOTH_LIMITS = (1e-2, 1e2)


def smooth_alpha_option() -> Any:
    """The ``smooth_alpha`` target option, declared here once for every target that smooths attention models."""
    import dataclasses

    return dataclasses.field(default=SMOOTH_ALPHA, metadata={
        "help": "attention models: move activation outliers of linear layers into their weights with this migration "
                "strength before INT8 (SmoothQuant; 0 = off), from the calibration set's per-channel maxima",
        "range": (0.0, 1.0)})


def smooth_for_int8(src: Path, stats: CalibrationStats, alpha: float, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The smoothing an INT8 build of ``src`` starts from, decided here once for every target: ``out`` smoothed
    (``smooth_linear_inputs``) when ``alpha`` is on and the calibration took per-channel maxima (it does for
    attention models only). Returns the smoothed tensors (empty when nothing was written: quantize ``src``) and
    the manifest's record of it."""
    if not alpha:
        return {}, {"applied": False, "reason": "smooth_alpha is 0"}
    if stats.channel_max is None:
        return {}, {"applied": False, "reason": "no per-channel calibration maxima (not an attention model, or "
                    "statistics from an older build cache)"}
    smoothed = smooth_linear_inputs(src, stats.channel_max, out, alpha)
    return smoothed, {"applied": bool(smoothed), "alpha": alpha, "tensors": len(smoothed)}


def smooth_linear_inputs(src: Path, channel_max: Path, out: Path, alpha: float = SMOOTH_ALPHA) -> dict[str, Any]:
    """Write ``out``: ``src`` with the activation outliers of its linear layers moved into their weights
    (SmoothQuant, Xiao et al. 2023): each input channel j of the layers reading one tensor is divided by
    ``s_j = max|x_j|^alpha / max|w_j|^(1-alpha)`` (a Mul on that tensor) and their weights' row j multiplied by
    it, which the float model does not see and a per-tensor activation scale does. ``channel_max`` holds max|x_j|
    from the calibration set (``CalibrateStage``). Returns, for each smoothed tensor, its new name and the largest
    |value| it can take over the calibration set (max_j max|x_j| / s_j): a static quantizer's range for it.

    Written here because the field's implementations do not reach this path: nncf's and ONNX Runtime's SmoothQuant
    run inside their static quantizers (ONNX Runtime's needs neural-compressor), while attention models on ONNX
    Runtime take the dynamic quantizer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgec.compiler.onnxutil import linear_layers, topological_sort

    model = onnx.load(str(src))
    with np.load(channel_max) as z:
        maxima = {str(name): z[f"t{i}"] for i, name in enumerate(z["names"])}
    weights = {i.name: i for i in model.graph.initializer}
    smoothed: dict[str, Any] = {}
    replaced: set[str] = set()
    for tensor, layers in linear_layers(model).items():
        x_max = maxima.get(tensor)
        transposed = [n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute) for n in layers]
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in layers]
        mats = [m.T if t else m for m, t in zip(mats, transposed)]  # each weight as [in, out]
        if x_max is None or any(m.ndim != 2 or m.shape[0] != x_max.size for m in mats):
            continue
        w_max = np.max([np.abs(m).max(axis=1) for m in mats], axis=0)
        scale = np.clip(np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha), *SMOOTH_LIMITS)
        factor, moved = f"{tensor}_smooth_factor", f"{tensor}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), factor))
        model.graph.node.append(onnx.helper.make_node("Mul", [tensor, factor], [moved], name=f"{tensor}_smooth"))
        for node, m, t in zip(layers, mats, transposed):
            w = (m * scale[:, None]).astype(np.float32)
            name = f"{node.input[1]}_smoothed_{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(w.T if t else w, name))
            replaced.add(node.input[1])
            node.input[0], node.input[1] = moved, name
        smoothed[tensor] = {"name": moved, "absmax": float(np.max(x_max / scale))}
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used or i.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    topological_sort(model)
    save_model(model, out)
    return smoothed


def with_smoothed_ranges(stats: CalibrationStats, smoothed: dict[str, Any], folder: Path) -> CalibrationStats:
    """``stats`` plus a symmetric range for each tensor ``smooth_linear_inputs`` made, written in ``folder``, for a
    static quantizer of the smoothed graph (the ranges are exact: derived from the same per-channel maxima)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data

    data = load_tensors_data(stats.path)
    ranges = {name: data[name] for name in data.keys()}
    for entry in smoothed.values():
        m = np.float32(entry["absmax"])
        ranges[entry["name"]] = TensorData(lowest=np.array([-m], np.float32), highest=np.array([m], np.float32))
    path = folder / stats.path.name
    save_tensors_data(TensorsData(data.calibration_method, ranges), path)
    return CalibrationStats(path, stats.method, stats.samples, len(ranges), stats.channel_max)
