"""FP16 ONNX for a strongly typed TensorRT build: float16 inside, float32 I/O, out-of-range ops kept in FP32.

TensorRT 11 (and 10.x with --stronglyTyped) takes each tensor's precision from the ONNX file, so the FP16
bundle must say which ops stay FP32. An op stays FP32 when a tensor it produces or consumes reached, on the
calibration data, a magnitude FP16 cannot hold with headroom (``limit``); without calibration data the check
cannot run, and the artifact records that it did not.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import TargetBuildError
from edgec.compiler.onnxutil import name_nodes, ort_session, save_model, topological_sort
from edgec.compiler.types import Feeds

FP16_MAX = 65504.0
#: Index arithmetic and box ops lose exactness in FP16 (integers above 2048 are not all representable); a
#: strongly typed engine runs them in FP32 as the file says. ONNX Runtime's own default block list is about
#: its CPU kernels, not TensorRT, and ORT casts around missing FP16 kernels itself when it runs the file.
FP32_OPS = frozenset({"Range", "CumSum", "NonMaxSuppression", "RoiAlign"})


def activation_peaks(model: Any, samples: Iterable[Feeds], max_samples: int) -> tuple[dict[str, float], int]:
    """Largest |value| of every float tensor (graph inputs and node outputs) over up to ``max_samples`` samples."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    initializers = {i.name for i in model.graph.initializer}
    watched = [o for n in model.graph.node for o in n.output if o in floats and o not in initializers]
    probe = type(model)()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in watched:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    with _temporary_model(probe) as path:
        session = ort_session(path, threads=1, level="disable")
        out_names = [o.name for o in session.get_outputs()]
        in_names = [i.name for i in session.get_inputs()]
        peaks: dict[str, float] = {}
        used = 0
        for feeds in samples:
            if used >= max_samples:
                break
            used += 1
            run_feeds = {n: feeds[n] for n in in_names}
            for name, arr in list(zip(out_names, session.run(out_names, run_feeds))) + list(run_feeds.items()):
                arr = np.asarray(arr)
                if arr.size and np.issubdtype(arr.dtype, np.floating):
                    with np.errstate(invalid="ignore"):
                        peak = float(np.max(np.abs(arr)))
                    if np.isnan(peak):
                        peak = float("inf")
                    peaks[name] = max(peaks.get(name, 0.0), peak)
    return peaks, used


@contextlib.contextmanager
def _temporary_model(model: Any):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgec-trt-") as tmp:
        path = Path(tmp) / "probe.onnx"
        save_model(model, path)
        yield path


def nodes_to_keep_fp32(model: Any, peaks: dict[str, float], limit: float) -> dict[str, str]:
    """Node name -> why it stays FP32: it produces or consumes a tensor whose peak exceeds ``limit``,
    or consumes a weight FP16 cannot represent."""
    from onnx import numpy_helper

    hot = {name: peak for name, peak in peaks.items() if peak > limit}
    big_weights = set()
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size and np.issubdtype(arr.dtype, np.floating) and float(np.max(np.abs(arr))) > FP16_MAX:
            big_weights.add(init.name)
    keep: dict[str, str] = {}
    for node in model.graph.node:
        for out in node.output:
            if out in hot:
                keep[node.name] = f"output '{out}' reaches {hot[out]:.4g} (FP16 limit used: {limit:g})"
        for inp in node.input:
            if inp in hot and node.name not in keep:
                keep[node.name] = f"input '{inp}' reaches {hot[inp]:.4g} (FP16 limit used: {limit:g})"
            if inp in big_weights and node.name not in keep:
                keep[node.name] = f"weight '{inp}' exceeds the FP16 maximum {FP16_MAX:g}"
    return keep


def convert_fp16(
    src: Path,
    out: Path,
    calibration: Iterable[Feeds] | None,
    limit: float,
    max_samples: int,
) -> dict[str, Any]:
    """Write the FP16 ONNX; returns what the artifact metadata records about it."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        from edgec.compiler.errors import missing_dependency

        raise missing_dependency("onnxruntime", "onnx", "FP16 conversion") from None
    model = onnx.load(str(src))
    name_nodes(model)
    info: dict[str, Any] = {"fp16_limit": limit, "keep_io_types": True}
    keep: dict[str, str] = {}
    if calibration is None:
        info["range_check"] = "not run: no calibration data (pass --calib to keep out-of-range ops in FP32)"
    else:
        peaks, used = activation_peaks(model, calibration, max_samples)
        keep = nodes_to_keep_fp32(model, peaks, limit)
        info["range_check"] = f"ran on {used} calibration sample(s)"
        info["peak_abs_activation"] = round(max(peaks.values(), default=0.0), 6)
    blocked_ops = sorted({n.op_type for n in model.graph.node if n.op_type in FP32_OPS})
    for node in model.graph.node:
        if node.op_type in blocked_ops and node.name not in keep:
            keep[node.name] = f"{node.op_type} stays FP32 (index or box arithmetic)"
    info["fp32_nodes"] = keep
    original = {n.name for n in model.graph.node}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            m16 = convert_float_to_float16(
                model, keep_io_types=True, node_block_list=list(keep), op_block_list=blocked_ops,
                disable_shape_infer=False,
            )
    except Exception as exc:
        raise TargetBuildError(
            f"FP16 conversion of '{src.name}' failed: {' '.join(str(exc).split())[:300]}",
            hint="build fp32 or int8 for this model, and report the model",
        ) from None
    info["round_trips_removed"] = drop_round_trip_casts(m16, original)
    topological_sort(m16)
    save_model(m16, out)
    return info


def drop_round_trip_casts(model: Any, original: set[str] = frozenset()) -> int:
    """Remove the converter's float32 -> float16 -> float32 Cast pairs (in place); returns how many.

    The converter casts every FP32-kept node's output to FP16 and back, even between two kept nodes: the very
    overflow the node was kept for would happen in that Cast. Consumers of the second Cast read the float32
    tensor directly instead.
    """
    from onnx import TensorProto, helper

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    replace: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in outputs or node.name in original:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16 or first.name in original:
            continue
        source = producer.get(first.input[0])
        if source is not None and cast_to(source) == TensorProto.FLOAT16:
            continue
        replace[node.output[0]] = first.input[0]
    if not replace:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    removed: set[str] = set()
    while True:  # a removed Cast can leave the Cast before it unused
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            removed.update(n.output)
            graph.node.remove(n)
    stale = [vi for vi in graph.value_info if vi.name in removed]
    for vi in stale:
        graph.value_info.remove(vi)
    return len(replace)
