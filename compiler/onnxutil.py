"""ONNX helpers shared by the stages and the targets: normalisation, saving, sessions, inspection."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

TWO_GB = 2**31 - 1
#: The lowest opset edgec's ONNX files have: per-channel QuantizeLinear/DequantizeLinear (their ``axis``
#: attribute), which every INT8 flavour uses, arrived in opset 13.
MIN_OPSET = 13


def constants_to_initializers(model: Any) -> int:
    """Move Constant nodes' tensors into graph initializers (in place); returns how many moved.

    Quantizers only treat initializers as weights: a Conv whose weight comes from a Constant node would
    otherwise be quantized as an activation, or not at all.
    """
    from onnx import numpy_helper

    moved = 0
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and not node.domain and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = type(attr.t)()
                tensor.CopyFrom(attr.t)
                tensor.name = node.output[0]
                model.graph.initializer.append(tensor)
                moved += 1
                continue
            if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                val = attr.f if attr.name == "value_float" else attr.i if attr.name == "value_int" else None
                if val is None:
                    val = list(attr.floats) if attr.name == "value_floats" else list(attr.ints)
                dtype = np.float32 if "float" in attr.name else np.int64
                model.graph.initializer.append(numpy_helper.from_array(np.array(val, dtype=dtype), node.output[0]))
                moved += 1
                continue
        keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def save_model(model: Any, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > TWO_GB:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def ort_session(path: Path | str, threads: int = 1, level: str = "all", optimized_path: Path | None = None,
                log_level: int = 3) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = log_level
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def op_histogram(model: Any) -> dict[str, int]:
    counts = collections.Counter(
        (f"{n.domain}." if n.domain and n.domain != "ai.onnx" else "") + n.op_type for n in model.graph.node
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def subgraphs(node: Any) -> list[Any]:
    """The graphs a node holds in its attributes (an If's branches, a Loop's or Scan's body)."""
    return [sub for a in node.attribute for sub in ([a.g] if a.HasField("g") else list(a.graphs))]


def control_flow_ops(model: Any) -> list[str]:
    """The op types of the main graph's nodes that hold subgraphs (If, Loop, Scan)."""
    return sorted({n.op_type for n in model.graph.node if subgraphs(n)})


def parameter_count(model: Any) -> int:
    """Elements of floating-point weights (initializers and Constant nodes); shape constants do not count."""
    from onnx import TensorProto

    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    tensors = []
    graphs = [model.graph]
    while graphs:  # the main graph and the subgraphs of If/Loop/Scan nodes, whose weights are theirs
        g = graphs.pop()
        tensors += list(g.initializer)
        tensors += [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
        graphs += [sub for n in g.node for sub in subgraphs(n)]
    return sum(int(np.prod(t.dims)) if t.dims else 1 for t in tensors if t.data_type in floating)


def mac_count(model: Any) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul, from inferred shapes (batch as given)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        # an unknown or symbolic dim (dim_value 0 or -1 in some exporters' files) counts as 1
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and out and len(node.input) > 1 and node.input[1] in shapes:
            w = shapes[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose" and node.input[0] in shapes and len(node.input) > 1:
            w = shapes.get(node.input[1], [])
            x = shapes[node.input[0]]
            if w and x:
                macs += int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and out and node.input[0] in shapes:
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a and len(a) >= 2 else (a[-1] if a else 1)
            macs += int(np.prod(out)) * int(k)
    return macs


# Ops that ORT runs as int8 kernels once QDQ is fused; the float ops they replace.
INT8_KERNELS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
    "QGemm", "DynamicQuantizeMatMul", "NhwcQLinearConv", "QAttention",
}
FLOAT_COMPUTE = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose"}


#: Ops that only a quantized model holds: a file with them was quantized already.
QUANTIZED_OPS = INT8_KERNELS | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeLSTM",
                                "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
                                "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax"}


def quantized_ops(model: Any) -> dict[str, int]:
    """The quantized ops of ``model`` (main graph) and how many of each; empty for a float model."""
    return dict(collections.Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS))


def kernel_counts(model: Any) -> dict[str, int]:
    """Int8 and float compute kernels in an (optimized) ONNX graph, whatever their domain."""
    int8 = sum(1 for n in model.graph.node if n.op_type in INT8_KERNELS)
    flt = [n for n in model.graph.node if n.op_type in FLOAT_COMPUTE]
    # Ops the runtime left in float between a DequantizeLinear and a QuantizeLinear (a PReLU it has no int8
    # kernel for): each costs a dequantize and a quantize on top of its float work.
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers = consumers_of(model)
    requantized = [
        n for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(producer.get(i) == "DequantizeLinear" for i in n.input)
        and any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, []))
    ]
    return {"int8": int8, "float": len(flt), "float_nodes": [n.name or n.op_type for n in flt],
            "requantized": len(requantized), "requantized_nodes": [n.name or n.op_type for n in requantized][:20],
            "requantized_ops": dict(collections.Counter(n.op_type for n in requantized))}


def topological_sort(model: Any) -> None:
    """Reorder the main graph's nodes so each comes after its producers (in place; stable otherwise)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            # Inputs from an outer scope or a cycle: keep what is left in its order rather than guess.
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def opset_of(model: Any) -> int:
    """The default-domain opset a ModelProto imports (0 when none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def raise_opset(model: Any, opset: int = MIN_OPSET) -> tuple[Any, str | None]:
    """``model`` converted to at least ``opset`` with ONNX's version converter; (model, None), or the
    unchanged model and why the conversion failed."""
    import onnx

    if opset_of(model) >= opset:
        return model, None
    try:
        return onnx.version_converter.convert_version(model, opset), None
    except Exception as exc:
        return model, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def name_nodes(model: Any) -> int:
    """Give every unnamed node a unique name (in place), so node lists and error messages can name it."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            base = f"{node.op_type}_{i}"
            name = base
            k = 0
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            node.name = name
            taken.add(name)
            named += 1
    return named


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass
class GraphStructure:
    """What INT8 first tries depend on, read from an FP32 ONNX graph.

    ``weighted``: Conv/ConvTranspose/Gemm/MatMul nodes with a constant weight (what int8 kernels speed up);
    ``attention``: MatMuls of two computed tensors fed by a Softmax (attention scores x values), the mark of a
    transformer, whose Softmax, LayerNorm, GELU and mask arithmetic INT8 ranges cannot hold;
    ``tail``: nodes after the last weighted node on every path to an output (a detector's box decoding and
    concat of boxes with scores, pooling and normalisation after an encoder's last layer), where one int8 scale
    would have to span unrelated ranges.
    """

    weighted: list[str]
    attention: list[str]
    tail: list[str]

    @property
    def is_attention_model(self) -> bool:
        return bool(self.attention)


#: Activations: a quantizer folds them into the layer before them, or (ONNX Runtime's QDQ quantizer, for the
#: ones it has QLinear kernels for) quantizes them on their own; their rounding belongs to that layer.
ACTIVATION_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "PRelu"})


def with_activations(model: Any, nodes: list[str]) -> list[str]:
    """``nodes`` and the activation nodes that read their outputs (Conv -> Sigmoid of a SiLU): a layer kept in
    float keeps its activation in float too, else the activation's own Q/DQ still rounds the layer's output."""
    wanted = set(nodes)
    outputs = {o for n in model.graph.node if n.name in wanted for o in n.output}
    extra = [n.name for n in model.graph.node
             if n.op_type in ACTIVATION_OPS and n.name not in wanted and any(i in outputs for i in n.input)]
    return [*nodes, *extra, *_constant_scales_into(model, wanted)]


def _constant_scales_into(model: Any, wanted: set[str]) -> list[str]:
    """The Mul/Div-by-a-constant nodes read only by ``wanted`` nodes: a per-channel scale in front of a kept layer
    (a BatchNorm the exporter left unfolded, an outlier channel) is part of it; quantized, its output would round
    the kept layer's input with the range the scale made."""
    constants = constant_tensors(model)
    readers = consumers_of(model)
    return [n.name for n in model.graph.node
            if n.op_type in ("Mul", "Div") and n.name not in wanted and len(n.input) == 2 and n.input[1] in constants
            and all(readers.get(o) and {r.name for r in readers[o]} <= wanted for o in n.output)]


def constant_tensors(model: Any) -> set[str]:
    """The names of the tensors that hold constants: initializers and Constant node outputs."""
    constants = {i.name for i in model.graph.initializer}
    return constants | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def consumers_of(model: Any) -> dict[str, list[Any]]:
    """The nodes reading each tensor, by tensor name."""
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


def expose_outputs(model: Any, names: list[str], path: Path, types: dict[str, int] | None = None) -> None:
    """Write ``model`` with ``names`` added to its graph outputs (element type from ``types``, else float)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            elem = (types or {}).get(name, onnx.TensorProto.FLOAT)
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    save_model(m, path)


def linear_layers(model: Any) -> dict[str, list[Any]]:
    """The MatMul/Gemm nodes with a constant weight (input 1) and no transposed input, by the activation tensor
    they read: the layers smoothing moves activation outliers into (one scale per input tensor, shared by the
    layers that read it, as Q, K and V read one LayerNorm output)."""
    constants = {i.name for i in model.graph.initializer}
    found: dict[str, list[Any]] = {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in constants:
            continue
        if n.input[0] in constants or any(a.name == "transA" and a.i for a in n.attribute):
            continue
        found.setdefault(n.input[0], []).append(n)
    return found


def graph_structure(model: Any) -> GraphStructure:
    constants = constant_tensors(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = consumers_of(model)
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and any(i in constants for i in n.input[1:2])]

    def fed_by_softmax(tensor: str, depth: int = 4) -> bool:
        node = producer.get(tensor)
        while node is not None and depth > 0:
            if node.op_type == "Softmax":
                return True
            if not node.input:
                return False
            node, depth = producer.get(node.input[0]), depth - 1
        return False

    attention = [
        n.name for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in constants for i in n.input) and any(fed_by_softmax(i) for i in n.input)
    ]
    # Nodes from which no weighted node can be reached: walk consumers forward from each node (memoised).
    weighted_set = set(weighted)
    reaches: dict[str, bool] = {}
    for node in reversed(model.graph.node):  # topological order: consumers are already known
        reaches[node.name] = any(
            c.name in weighted_set or reaches.get(c.name, False) for o in node.output for c in consumers.get(o, [])
        )
    tail = [n.name for n in model.graph.node
            if weighted and not reaches[n.name] and n.name not in weighted_set and n.op_type != "Constant"]
    return GraphStructure(weighted, attention, tail)
