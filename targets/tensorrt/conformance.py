"""Conformance of a QDQ ONNX model with TensorRT's explicit quantization, naming the offending node.

Rules (each violation carries its rule id):
- ``opset``: the default-domain opset is at least 13 (per-axis QuantizeLinear/DequantizeLinear).
- ``int8``: Q/DQ run in signed int8; uint8 (including a missing zero point, which means uint8) is refused.
- ``zero-point``: every zero point is 0 (symmetric quantization).
- ``int32-bias``: no DequantizeLinear of an int32 tensor (ONNX Runtime's quantized bias).
- ``constant-scale``: scales and zero points are constants.
- ``per-tensor-activation``: activations are quantized per tensor (one scale).
- ``per-channel-weight``: weights of Conv/ConvTranspose/Gemm/MatMul are quantized per output channel, on the
  output-channel axis (0 for Conv and for Gemm with transB, 1 for ConvTranspose, the last for MatMul).
- ``weight-range``: int8 weights stay in [-127, 127].
- ``missing-qdq``: every input of Conv/ConvTranspose/Gemm/MatMul and both inputs of a residual Add come from
  a DequantizeLinear (otherwise TensorRT runs that layer in floating point).

Per-tensor weights are valid TensorRT, but not edgec's TensorRT flavour: ``require_per_channel=False`` accepts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import TargetBuildError
from edgec.compiler.onnxutil import MIN_OPSET, WEIGHTED_OPS

RULES = (
    "opset", "int8", "zero-point", "int32-bias", "constant-scale", "per-tensor-activation",
    "per-channel-weight", "weight-range", "missing-qdq",
)


@dataclasses.dataclass(frozen=True)
class Violation:
    rule: str
    node: str  # the node's name, or "<op_type>#<index>" when it has none; "" for model-level rules
    op_type: str
    message: str

    def __str__(self) -> str:
        where = f"node '{self.node}' ({self.op_type})" if self.node else "model"
        return f"{where}: {self.message} [{self.rule}]"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class _Graph:
    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model = model
        self.nodes = list(model.graph.node)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.elem_types = self._elem_types()

    def _elem_types(self) -> dict[str, int]:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:
            inferred = self.model
        g = inferred.graph
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
        for i in g.initializer:
            types[i.name] = i.data_type
        return types

    def label(self, node: Any) -> str:
        return node.name or f"{node.op_type}#{self.nodes.index(node)}"

    def attr(self, node: Any, name: str, default: Any) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def weight_values(self, tensor: str) -> np.ndarray | None:
        """The constant behind ``tensor``: itself, or the float constant a QuantizeLinear quantizes."""
        if tensor in self.consts:
            return self.consts[tensor]
        q = self.producer.get(tensor)
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in self.consts:
            return self.consts[q.input[0]]
        return None

    def dq_source(self, tensor: str) -> Any:
        """The DequantizeLinear that directly produces ``tensor``, if any."""
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None


def _type_name(elem_type: int | None) -> str | None:
    """'int8', 'uint8', ... for an ONNX element type; None when unknown."""
    if not elem_type:
        return None
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return None


def _out_axis(graph: _Graph, node: Any, weight: np.ndarray) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if graph.attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return weight.ndim - 1
    return 0


def check_qdq(model: Any, require_per_channel: bool = True, float_islands: Collection[str] = ()) -> list[Violation]:
    """Every violation of TensorRT's QDQ rules in ``model`` (a ModelProto or a path), in graph order.

    ``float_islands`` names nodes left without Q/DQ on purpose (they run in floating point): not violations.
    """
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    g = _Graph(model)
    found: list[Violation] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        found.append(Violation("opset", "", "", f"opset {opset}; TensorRT's per-channel Q/DQ needs opset >= {MIN_OPSET}"))
    weights_of = _quantized_weights(g)
    for node in g.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        operand_found, is_bias = _operand_violations(g, node)
        found.extend(operand_found)
        if not is_bias:
            found.extend(_scale_violations(g, node, weights_of, require_per_channel))
    found.extend(_missing_qdq(g, float_islands))
    return found


def _quantized_weights(g: _Graph) -> dict[str, tuple[Any, Any]]:
    """DQ output -> (the weighted node consuming it, the DQ node), for each constant weight behind a DQ."""
    weights_of: dict[str, tuple[Any, Any]] = {}
    for node in g.nodes:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            dq = g.dq_source(node.input[1])
            if dq is not None and g.weight_values(dq.input[0]) is not None:
                weights_of[node.input[1]] = (node, dq)
    return weights_of


def _operand_violations(g: _Graph, node: Any) -> tuple[list[Violation], bool]:
    """A Q/DQ node's violations of constant-scale, int32-bias, zero-point, int8; True if it dequantizes a bias."""
    from onnx import TensorProto

    found: list[Violation] = []
    label = g.label(node)
    is_dq = node.op_type == "DequantizeLinear"
    scale = node.input[1] if len(node.input) > 1 else ""
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    for name, what in ((scale, "scale"), (zp, "zero point")):
        if name and name not in g.consts:
            found.append(Violation("constant-scale", label, node.op_type, f"{what} '{name}' is not a constant"))
    x_type = g.elem_types.get(node.input[0])
    if is_dq and x_type == TensorProto.INT32:
        found.append(Violation(
            "int32-bias", label, node.op_type,
            f"dequantizes the int32 tensor '{node.input[0]}' (a quantized bias); keep biases float "
            "(ONNX Runtime: QuantizeBias=False)",
        ))
        return found, True
    q_type = _type_name(x_type) if is_dq else None
    if zp in g.consts:
        zp_arr = g.consts[zp]
        q_type = zp_arr.dtype.name
        if zp_arr.size and np.any(zp_arr != 0):
            found.append(Violation(
                "zero-point", label, node.op_type,
                f"zero point '{zp}' is {zp_arr.ravel()[:4].tolist()}; TensorRT needs 0 (symmetric quantization)",
            ))
    elif not zp and not is_dq:
        # ONNX: without a zero point QuantizeLinear outputs uint8, unless opset 21's output_dtype says otherwise.
        q_type = _type_name(g.attr(node, "output_dtype", 0)) or "uint8"
    if q_type is not None and q_type != "int8":
        found.append(Violation(
            "int8", label, node.op_type,
            f"quantizes to {q_type}" + (" (no zero point given)" if not zp else "") + "; TensorRT needs signed int8",
        ))
    return found, False


def _scale_violations(g: _Graph, node: Any, weights_of: dict[str, tuple[Any, Any]],
                      require_per_channel: bool) -> list[Violation]:
    """A Q/DQ node's violations of per-channel-weight, weight-range and per-tensor-activation (constant scales only)."""
    scale = node.input[1] if len(node.input) > 1 else ""
    scale_arr = g.consts.get(scale)
    if scale_arr is None:
        return []
    is_dq = node.op_type == "DequantizeLinear"
    weight = g.weight_values(node.input[0]) if is_dq else None
    out_name = node.output[0]
    if is_dq and out_name in weights_of and weight is not None:
        consumer, _ = weights_of[out_name]
        return _weight_violations(g, node, consumer, weight, scale_arr, require_per_channel)
    if scale_arr.size > 1 and g.weight_values(node.input[0]) is None:
        return [Violation(
            "per-tensor-activation", g.label(node), node.op_type,
            f"activation '{node.input[0]}' has {scale_arr.size} scales; TensorRT quantizes activations per tensor",
        )]
    return []


def _weight_violations(g: _Graph, node: Any, consumer: Any, weight: np.ndarray, scale_arr: np.ndarray,
                       require_per_channel: bool) -> list[Violation]:
    """A weight's DQ node's violations of per-channel-weight (axis, scale count) and weight-range."""
    found: list[Violation] = []
    label = g.label(node)
    axis_wanted = _out_axis(g, consumer, weight)
    if scale_arr.size <= 1:
        if require_per_channel and weight.ndim > 1 and weight.shape[axis_wanted] > 1:
            found.append(Violation(
                "per-channel-weight", label, node.op_type,
                f"weight '{node.input[0]}' of {consumer.op_type} '{g.label(consumer)}' is quantized per tensor; "
                f"edgec's TensorRT flavour quantizes weights per output channel (axis {axis_wanted})",
            ))
    else:
        axis = g.attr(node, "axis", 1)
        axis = axis + weight.ndim if axis < 0 else axis
        if axis != axis_wanted or scale_arr.size != weight.shape[axis_wanted]:
            found.append(Violation(
                "per-channel-weight", label, node.op_type,
                f"weight '{node.input[0]}' of {consumer.op_type} '{g.label(consumer)}' is quantized on axis "
                f"{axis} with {scale_arr.size} scales; TensorRT needs the output-channel axis {axis_wanted} "
                f"({weight.shape[axis_wanted]} scales)",
            ))
    if weight.dtype == np.int8 and weight.size and int(weight.min()) < -127:
        found.append(Violation(
            "weight-range", label, node.op_type,
            f"weight '{node.input[0]}' holds -128; TensorRT's symmetric weights stay in [-127, 127]",
        ))
    return found


def _missing_qdq(g: _Graph, float_islands: Collection[str]) -> list[Violation]:
    """Inputs of weighted layers and residual Adds that do not come from a DequantizeLinear (missing-qdq)."""
    found: list[Violation] = []
    constants = set(g.consts)
    for node in g.nodes:
        if node.name in float_islands:
            continue
        if node.op_type in WEIGHTED_OPS:
            wanted = [i for i in node.input[:2] if i]
            what = "input"
        elif node.op_type == "Add" and len(node.input) == 2 and not (set(node.input) & constants):
            wanted = list(node.input)
            what = "residual input"
        else:
            continue
        for name in wanted:
            if g.dq_source(name) is None:
                found.append(Violation(
                    "missing-qdq", g.label(node), node.op_type,
                    f"{what} '{name}' does not come from a DequantizeLinear: TensorRT would run this layer in "
                    "floating point",
                ))
    return found


def assert_conformant(path: Path, require_per_channel: bool = True, limit: int = 5,
                      float_islands: Collection[str] = ()) -> None:
    """Raise TargetBuildError naming the offending nodes when ``path`` breaks TensorRT's QDQ rules."""
    violations = check_qdq(path, require_per_channel=require_per_channel, float_islands=float_islands)
    if not violations:
        return
    shown = "; ".join(str(v) for v in violations[:limit])
    more = f" (and {len(violations) - limit} more)" if len(violations) > limit else ""
    raise TargetBuildError(
        f"'{Path(path).name}' is not a TensorRT-conformant QDQ model: {shown}{more}",
        hint="this is a bug in edgec's TensorRT quantization when edgec wrote the file; please report it with the "
        "model (the rules are listed in edgec.targets.tensorrt.conformance)",
    )
