"""Torch model -> .tflite with litert-torch: FP32, FP16 weights, full-integer INT8 (PT2E, histogram observer).

Shared by the targets that ship .tflite files (the arm target runs them with LiteRT, the mcu target compiles
them for microcontrollers). ``TFLiteIO`` describes each input and output: what the file holds (layout, dtype,
quantization) and how to get there from the spec's float NCHW tensors, so a runner (or a board with just
numpy) feeds the file with ``feeds_to_tflite`` and reads it with ``outputs_from_tflite``.

torch, litert-torch and LiteRT are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, ConfigError, ExportError, QuantizationError, missing_dependency
from edgec.compiler.modelio import torchscript_to_exported
from edgec.compiler.types import CalibrationSet, InputSpec, LayerOutput, Precision, TensorSpec
from edgec.targets.pt2e import calibration_batches as _calibration_batches
from edgec.targets.pt2e import pick as _pick
from edgec.targets.pt2e import sample_args as _sample_args

#: The observers that collect INT8 activation ranges; histogram keeps the full logit range
#: (digits CNN: max logit error 1.3, against 8.9 for ai-edge-quantizer's smoothed min/max, which clipped them).
OBSERVERS = ("histogram", "minmax")
#: Spec layout -> .tflite layout for image tensors, and back.
TO_CHANNELS_LAST = (0, 2, 3, 1)
TO_CHANNELS_FIRST = (0, 3, 1, 2)
_QUANTIZED = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclasses.dataclass
class TFLiteIO:
    """One input or output of a .tflite file, and how it relates to the spec tensor of the same position."""

    name: str  # the edgec/ONNX-side name from the spec
    tflite_name: str
    shape: tuple[int, ...]  # as the .tflite holds it (NHWC for images when channels_last_io)
    dtype: str  # "int8" | "float32" | "int32" ...
    scale: float | None = None  # quantization parameters when dtype is a quantized integer, else None
    zero_point: int | None = None
    # inputs: perm taking the spec layout to the .tflite layout; outputs: perm taking the .tflite layout back
    transpose: tuple[int, ...] | None = None
    layout: str | None = None  # layout in the .tflite: "NHWC" / "NCHW" / None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tflite_name": self.tflite_name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "transpose": list(self.transpose) if self.transpose is not None else None,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TFLiteIO:
        return cls(
            name=d["name"],
            tflite_name=d["tflite_name"],
            shape=tuple(int(x) for x in d["shape"]),
            dtype=d["dtype"],
            scale=None if d.get("scale") is None else float(d["scale"]),
            zero_point=None if d.get("zero_point") is None else int(d["zero_point"]),
            transpose=tuple(d["transpose"]) if d.get("transpose") is not None else None,
            layout=d.get("layout"),
        )


@dataclasses.dataclass
class TFLiteModel:
    """A .tflite file written by ``convert`` and what it holds."""

    path: Path
    precision: Precision
    inputs: list[TFLiteIO]
    outputs: list[TFLiteIO]
    ops: list[str]  # builtin op names used, e.g. ["CONV_2D", "FULLY_CONNECTED"]
    #: How it was made: converter, fixed batch, seconds, quantization settings (JSON-ready).
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Feeding and reading a .tflite file: numpy only.


def feeds_to_tflite(ios: list[TFLiteIO], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Arrays for the .tflite inputs, in order: taken by spec name (else position), transposed to the file's
    layout, floats quantized to int8 (round half to even, clip), other dtypes cast to the file's (int64 ->
    int32)."""
    arrays = []
    for i, io_ in enumerate(ios):
        arr = _pick(feeds, io_.name, i, len(ios))
        if arr is None:
            raise CalibrationError(
                f"no feed for TFLite input '{io_.name}' (got {list(feeds)})",
                hint="name the inputs like the model's",
            )
        if io_.transpose is not None:
            arr = arr.transpose(io_.transpose)
        if io_.dtype in _QUANTIZED and io_.scale and np.issubdtype(arr.dtype, np.floating):
            lo, hi = _QUANTIZED[io_.dtype]
            q = np.round(arr.astype(np.float32) / np.float32(io_.scale)) + io_.zero_point
            arr = np.clip(q, lo, hi).astype(io_.dtype)
        elif arr.dtype.name != io_.dtype:
            arr = arr.astype(io_.dtype)
        arrays.append(np.ascontiguousarray(arr))
    return arrays


def outputs_from_tflite(ios: list[TFLiteIO], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The .tflite outputs as the spec has them: dequantized to float32, transposed back, by spec name."""
    out = {}
    for io_, arr in zip(ios, arrays):
        arr = np.asarray(arr)
        if io_.dtype in _QUANTIZED and io_.scale:
            arr = (arr.astype(np.float32) - np.float32(io_.zero_point)) * np.float32(io_.scale)
        if io_.transpose is not None:
            arr = arr.transpose(io_.transpose)
        out[io_.name] = np.ascontiguousarray(arr)
    return out


# ----------------------------------------------------------------------------------------------------------
# Reading a .tflite file.


def _schema() -> Any:
    for module in ("ai_edge_litert.schema_py_generated", "litert_converter.schema_py_generated"):
        try:
            return __import__(module, fromlist=["Model"])
        except ImportError:
            continue
    raise missing_dependency("ai-edge-litert", "arm", "reading .tflite files")



def run_fixed_shape(
    inputs: list[TFLiteIO], outputs: list[TFLiteIO], feeds: dict[str, np.ndarray],
    invoke: Callable[[list[np.ndarray]], list[np.ndarray]], file_name: str,
) -> dict[str, np.ndarray]:
    """Outputs by spec name for ``feeds``, through ``invoke`` (one call of an interpreter whose inputs have the
    file's fixed shapes): a batch of several rows runs one row at a time and the outputs are stacked."""
    calls = _row_calls(inputs, feeds_to_tflite(inputs, feeds), file_name)
    if len(calls) == 1:
        return outputs_from_tflite(outputs, invoke(calls[0]))
    per_row = [invoke(call) for call in calls]
    stacked = [np.concatenate([r[k] for r in per_row]) for k in range(len(outputs))]
    return outputs_from_tflite(outputs, stacked)


def _row_calls(inputs: list[TFLiteIO], arrays: list[np.ndarray], file_name: str) -> list[list[np.ndarray]]:
    """The interpreter calls that feed ``arrays`` (in the file's layout) to a file of fixed input shapes: one
    call when they fit, else one per row of a batch whose rows each fit; a CalibrationError otherwise."""
    if all(a.shape == io_.shape for a, io_ in zip(arrays, inputs)):
        return [arrays]
    rows = {a.shape[0] if a.ndim else None for a in arrays}
    fits = all(
        a.ndim == len(io_.shape) and io_.shape[:1] == (1,) and a.shape[1:] == io_.shape[1:]
        for a, io_ in zip(arrays, inputs)
    )
    if not fits or len(rows) != 1:
        got = ", ".join(f"{io_.name}:{'x'.join(map(str, a.shape))}" for a, io_ in zip(arrays, inputs))
        want = ", ".join(f"{io_.name}:{'x'.join(map(str, io_.shape))}" for io_ in inputs)
        raise CalibrationError(
            f"'{file_name}' takes inputs {want} (in its own layout), not {got}",
            hint="give samples shaped like the model's input",
        )
    return [[a[i:i + 1] for a in arrays] for i in range(rows.pop())]


def io_from_metadata(metadata: dict[str, Any], path: Path | str) -> tuple[list[TFLiteIO], list[TFLiteIO]]:
    """The inputs and outputs an artifact's manifest entry records (its ``io``), or a ConfigError."""
    io = metadata.get("io") or {}
    if not io.get("inputs"):
        raise ConfigError(
            f"the manifest entry of '{path}' has no 'io' record", hint="rebuild it with edgec build"
        )
    return [TFLiteIO.from_dict(d) for d in io["inputs"]], [TFLiteIO.from_dict(d) for d in io["outputs"]]


def _op_codes(schema: Any, model: Any) -> list[str]:
    """The op name of each operator code of a flatbuffer model, by position."""
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Codes above 127 live only in builtin_code; older files only fill the deprecated byte.
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    return codes


def read_ops(path: str | Path) -> list[str]:
    """Builtin op names in the flatbuffer (sorted, each once), for an op resolver.

    Custom ops appear as ``CUSTOM:<custom code>``.
    """
    schema = _schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    codes = _op_codes(schema, model)
    used = set()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            used.add(codes[sg.Operators(o).OpcodeIndex()])
    return sorted(used)


def _interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise missing_dependency("ai-edge-litert", "arm", "reading .tflite files") from None
    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp


def _describe_io(
    path: Path, spec: InputSpec, in_perm: list, out_perm: list
) -> tuple[list[TFLiteIO], list[TFLiteIO]]:
    """The file's inputs and outputs, matched to the spec by position through the signature's names
    (litert-torch names positional arguments ``args_<i>`` and outputs ``output_<i>``)."""
    with quiet_litert():
        interp = _interpreter(path)
    try:
        sig = interp.get_signature_runner()
        by_name = (sig.get_input_details(), sig.get_output_details())
    except ValueError:  # no signature: the subgraph's own order
        by_name = ({}, {})

    def ordered(named: dict[str, dict], prefix: str, fallback: list[dict]) -> list[dict]:
        def position(name: str) -> int | None:
            m = re.fullmatch(rf"{prefix}_?(\d+)", name)
            return int(m.group(1)) if m else None

        if named and all(position(n) is not None for n in named):
            return [named[n] for n in sorted(named, key=position)]
        return fallback

    ins = ordered(by_name[0], "args", interp.get_input_details())
    outs = ordered(by_name[1], "output", interp.get_output_details())

    def make(d: dict, t: TensorSpec, perm: tuple[int, ...] | None) -> TFLiteIO:
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        quantized = dtype in _QUANTIZED and scale != 0.0
        layout = "NHWC" if perm is not None else (t.layout if len(d["shape"]) == 4 else None)
        return TFLiteIO(
            name=t.name,
            tflite_name=d["name"],
            shape=tuple(int(x) for x in d["shape"]),
            dtype=dtype,
            scale=float(scale) if quantized else None,
            zero_point=int(zp) if quantized else None,
            transpose=perm,
            layout=layout,
        )

    inputs = [make(d, t, p) for d, t, p in zip(ins, spec.inputs, in_perm)]
    outputs = [make(d, t, p) for d, t, p in zip(outs, spec.outputs, out_perm)]
    return inputs, outputs


# ----------------------------------------------------------------------------------------------------------
# Reading every tensor of one inference, for the layer-by-layer comparison.

#: Ops that only re-encode a tensor (an int8 file's requantizing, an FP16 file's weight casts): not layers.
_RECODE = frozenset({"QUANTIZE", "DEQUANTIZE"})
#: Module-stack levels that are not the user's model: edgec's wrappers, litert-torch's and torch.export's.
_WRAPPER_PREFIXES = ("litert_torch.", "edgec.", "torch.export.")


def _graph(path: Path) -> tuple[list[tuple[str, list[int], list[int]]], list[str], list[int]]:
    """Subgraph 0 of a .tflite file: its ops in execution order as (op name, input tensors, output tensors),
    its tensor names by index, and its input tensors."""
    schema = _schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    codes = _op_codes(schema, model)
    sg = model.Subgraphs(0)
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops.append((codes[op.OpcodeIndex()], ins, outs))
    names = []
    for t in range(sg.TensorsLength()):
        name = sg.Tensors(t).Name()
        names.append(name.decode() if isinstance(name, bytes) else str(name or f"tensor_{t}"))
    return ops, names, [int(sg.Inputs(i)) for i in range(sg.InputsLength())]


def module_from_tensor_name(name: str) -> str | None:
    """The user's module a litert-torch tensor name points at (``"layer1.0.conv (Conv2d)"``), else None.

    litert-torch names a tensor after the module stack of the FX nodes it comes from: one level per module,
    ``<class full name>_<attribute>``, joined by ``/``, ending in ``;``; fused ops join several such names
    with ``;`` and a uniquifying counter follows. The deepest stacks win. Under edgec's wrappers the first
    level is the model itself. A model loaded from an ExportedProgram (.pt2) has lost its stack by the time it
    is converted: its names hold only the wrappers, and there is no module to tell. Model outputs carry the
    signature's names (``serving_default_output_0_output``) instead.
    """
    stacks = []
    for part in name.split(";"):
        levels = []
        for level in part.split("/"):
            if not level or level.startswith(_WRAPPER_PREFIXES) or "_" not in level.rsplit(".", 1)[-1]:
                continue
            # "<module>.<Class>_<attr>": attributes hold no dots; class names seldom hold underscores.
            cls, _, attr = level.rsplit(".", 1)[-1].partition("_")
            levels.append((cls, attr))
        stacks.append(levels[1:])  # without the model itself (edgec's wrapper holds it as "model")
    depth = max((len(s) for s in stacks), default=0)
    if depth == 0:
        return None
    # Equally deep modules fused into one op (a conv and its activation in one Sequential) are all named.
    deepest = {f"{'.'.join(attr for _, attr in s)} ({s[-1][0]})" for s in stacks if len(s) == depth}
    return " + ".join(sorted(deepest))


def _dequantize(value: np.ndarray, details: dict[str, Any]) -> np.ndarray | None:
    """A tensor as float32: quantized integers through their scale and zero point (per axis when the tensor
    has several), floats as they are; None for other tensors (indices, shapes, booleans)."""
    q = details.get("quantization_parameters") or {}
    scales = np.asarray(q.get("scales", ()), np.float32)
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32)
    if not np.issubdtype(value.dtype, np.integer) or scales.size == 0 or not np.any(scales):
        return None
    zero = np.asarray(q.get("zero_points", ()), np.float32)
    if scales.size > 1:
        shape = [1] * value.ndim
        shape[int(q.get("quantized_dimension", 0))] = scales.size
        scales, zero = scales.reshape(shape), zero.reshape(shape)
    return ((value.astype(np.float32) - zero) * scales).astype(np.float32)


class LayerReader:
    """Every op output (and the inputs) of a .tflite file for one set of feeds, as ``LayerOutput``s.

    LiteRT runs the file with ``experimental_preserve_all_tensors`` and without delegates (XNNPACK keeps the
    tensors inside its partitions to itself), on its optimized builtin kernels or, with ``reference_kernels``,
    on its reference kernels (the arithmetic TFLite Micro's kernels follow). QUANTIZE and DEQUANTIZE ops are
    not layers: a tensor re-encoded for its one consumer is read after the re-encoding, as that consumer reads
    it, under the name of the op that computed it; an FP16 file's weight casts are weights. Tensors stay in
    the file's layout (NHWC feature maps): the comparison transposes where two files differ.
    """

    def __init__(self, path: Path, inputs: list[TFLiteIO], *, reference_kernels: bool = False):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise missing_dependency("ai-edge-litert", "arm", "reading .tflite tensors") from None
        self.path = Path(path)
        self.inputs = inputs
        kernels = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if reference_kernels:
            kernels = OpResolverType.BUILTIN_REF
        with quiet_litert():
            self.interpreter = Interpreter(
                model_path=str(self.path), num_threads=1, experimental_op_resolver_type=kernels,
                experimental_preserve_all_tensors=True,
            )
            self.interpreter.allocate_tensors()
        by_name = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        missing = [io_.tflite_name for io_ in inputs if io_.tflite_name not in by_name]
        if missing:
            raise ConfigError(f"'{self.path}' has no inputs {missing}, which its manifest records",
                              hint="rebuild the artifact with edgec build")
        self._in_index = [by_name[io_.tflite_name] for io_ in inputs]
        self._details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        ops, names, graph_inputs = _graph(self.path)
        self._plan = self._layers(ops, graph_inputs)
        self._names = _unique_names(names, [t for t, *_ in self._plan])
        self._modules = {t: module_from_tensor_name(names[t]) for t, *_ in self._plan}

    @staticmethod
    def _layers(ops: list, graph_inputs: list[int]) -> list[tuple[int, int, str, int, tuple]]:
        """(tensor, tensor to read it from, op, op index, input tensors) per layer output, in op order."""
        consumers: dict[int, int] = {}
        for _, ins, _ in ops:
            for t in ins:
                consumers[t] = consumers.get(t, 0) + 1
        live = set(graph_inputs)  # tensors computed from the inputs (the rest are weights and constants)
        alias: dict[int, int] = {}  # a re-encoded tensor -> the layer output it re-encodes
        read_from: dict[int, int] = {}
        plan = [(t, t, "", -1, ()) for t in graph_inputs]
        for i, (op, ins, outs) in enumerate(ops):
            sources = tuple(alias.get(t, t) for t in ins if t in live)
            if op in _RECODE:
                if not sources:
                    continue  # a weight cast
                live.update(outs)
                src = sources[0]
                alias.update((t, src) for t in outs)
                if consumers.get(ins[0]) == 1 and read_from.get(src, src) == ins[0]:
                    read_from[src] = outs[0]
                continue
            live.update(outs)
            plan += [(t, t, op, i, sources) for t in outs]
        return [(t, read_from.get(t, t), op, i, ins) for t, _, op, i, ins in plan]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[LayerOutput]:
        calls = _row_calls(self.inputs, feeds_to_tflite(self.inputs, feeds), self.path.name)
        rows = [self._invoke(arrays) for arrays in calls]
        layers = []
        for k, (t, _src, op, index, ins) in enumerate(self._plan):
            values = [row[k] for row in rows]
            if any(v is None for v in values):
                continue
            value = values[0] if len(values) == 1 else np.concatenate([np.atleast_1d(v) for v in values])
            layers.append(LayerOutput(
                tensor=self._names[t], op=op, index=index, inputs=tuple(self._names[i] for i in ins),
                value=value, module=self._modules[t],
            ))
        return layers

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray | None]:
        for index, arr in zip(self._in_index, arrays):
            self.interpreter.set_tensor(index, arr)
        self.interpreter.invoke()
        return [_dequantize(np.array(self.interpreter.get_tensor(src)), self._details[src])
                for _, src, *_ in self._plan]


def _unique_names(names: list[str], tensors: list[int]) -> dict[int, str]:
    """Tensor index -> its name, suffixed with ``@<index>`` where two of ``tensors`` share one."""
    counts: dict[str, int] = {}
    for t in tensors:
        counts[names[t]] = counts.get(names[t], 0) + 1
    return {t: names[t] if counts[names[t]] == 1 else f"{names[t]}@{t}" for t in tensors}


# ----------------------------------------------------------------------------------------------------------
# Converting.


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """Silence litert-torch's progress, torch's warnings and LiteRT's C++ logging, which writes to the
    process's stdout/stderr directly (errors still arrive as exceptions)."""
    from edgec.compiler.context import native_output, quiet_tools

    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with native_output(), quiet_tools("litert_torch", "absl"):
            yield
    finally:
        if saved_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved_env


def _layout_plan(spec: InputSpec, channels_last_io: bool) -> tuple[list, list]:
    """Per input and output, the perm to the .tflite layout (inputs) and back (outputs), or None."""
    def image(t: TensorSpec) -> bool:
        return len(t.shape) == 4 and t.dtype.startswith("float")

    in_perm = [
        TO_CHANNELS_LAST if channels_last_io and image(t) and t.layout == "NCHW" else None
        for t in spec.inputs
    ]
    # Feature-map outputs of an image model follow its inputs (a segmentation head, a detector's grid).
    any_image = any(p is not None for p in in_perm)
    out_perm = [
        TO_CHANNELS_FIRST if any_image and image(t) and t.layout in (None, "NCHW") else None
        for t in spec.outputs
    ]
    return in_perm, out_perm


def _wrap(module: Any, in_perm: list, out_perm: list) -> Any:
    """The model with positional inputs and a flat tuple of outputs, in the .tflite layouts."""
    import litert_torch
    import torch

    from edgec.compiler.modelio import flatten_outputs

    class Flat(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.model = inner

        def forward(self, *args: Any) -> tuple:
            return tuple(flatten_outputs(self.model(*args)))

    flat = Flat(module)
    args = [i for i, p in enumerate(in_perm) if p is not None]
    outs = [i for i, p in enumerate(out_perm) if p is not None]
    wrapper = litert_torch.to_channel_last_io(flat, args=args, outputs=outs) if args or outs else flat
    # Not .eval(): an ExportedProgram's module refuses train(); the wrappers themselves have no training mode.
    wrapper.training = flat.training = False
    return wrapper


def _module_path(node: Any) -> str | None:
    """The user's module an FX node came from ("block.conv1 (Conv2d)"), without edgec's wrappers."""
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    path = str(path)
    # edgec's wrappers: to_channel_last_io's ".wrapped", then Flat's ".model".
    for prefix in ("wrapped", "model"):
        if path == prefix:
            path = ""
        elif path.startswith(prefix + "."):
            path = path[len(prefix) + 1:]
    name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
    return f"{path} ({name})" if path else None


def _source_module_path(module: Any, op: str) -> str | None:
    """Where ``op`` sits in a GraphModule (an ExportedProgram's module), whose re-export loses the module
    stack."""
    import torch

    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "call_function" and str(node.target) == op:
            return _module_path(node)
    return None


def _failing_node(exc: BaseException) -> Any:
    """The FX node litert-torch was lowering when it raised, from the traceback's interpreter frames."""
    import torch

    found = None
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, torch.fx.Node):
            found = node
        tb = tb.tb_next
    return found


def _conversion_error(exc: BaseException, source: str, what: str, module: Any = None) -> ExportError:
    text = " ".join(str(exc).split())
    m = re.search(r"Lowering not found: (\S+)", text)
    node = _failing_node(exc)
    where = _module_path(node) if node is not None else None
    if m:
        op = m.group(1)
        where = where or _source_module_path(module, op)
        in_module = f" in module {where}" if where else ""
        return ExportError(
            f"litert-torch cannot lower the op {op}{in_module} of '{source}' to TFLite",
            hint=f"rewrite that part of the model without {op.split('.')[1] if '.' in op else op}, "
            "or build for a target that runs ONNX (e.g. --target cpu)",
        )
    first = text[:300] or type(exc).__name__
    in_module = f" (at module {where})" if where else ""
    return ExportError(
        f"litert-torch cannot convert '{source}' to TFLite ({what}){in_module}: "
        f"{type(exc).__name__}: {first}",
        hint="the message names the failing op or construct; rewrite it in the model, "
        "or build for an ONNX target (e.g. --target cpu)",
    )


def _observer_config(observer: str, per_channel: bool, histogram_bins: int) -> Any:
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    base = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel)
    if observer == "histogram":
        ctr = HistogramObserver.with_args(eps=2**-12, bins=histogram_bins)
    else:
        ctr = MinMaxObserver.with_args(eps=2**-12)
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def _convert_float(wrapper: Any, args: tuple, out: Path, source: str, module: Any) -> None:
    import litert_torch

    try:
        with quiet_litert():
            edge = litert_torch.convert(wrapper, args)
            edge.export(str(out))
    except (ExportError, QuantizationError):
        raise
    except Exception as exc:
        raise _conversion_error(exc, source, "float conversion", module) from None


def _to_fp16(src: Path, out: Path) -> int:
    """FP16 weights, float32 compute and I/O (TFLite's 'float16 quantization': a DEQUANTIZE per weight)."""
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer
    except ImportError:
        raise missing_dependency("ai-edge-quantizer", "arm", "FP16 TFLite models") from None
    q = quantizer.Quantizer(str(src))
    q.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    try:
        with quiet_litert():
            result = q.quantize(enable_progress_report=False)
    except Exception as exc:
        raise QuantizationError(
            f"ai-edge-quantizer could not cast the weights of '{src.name}' to FP16: "
            f"{' '.join(str(exc).split())[:300]}",
            hint="build fp32 or int8 for this model",
        ) from None
    out.write_bytes(bytes(result.quantized_model))
    return len(result.quantized_model)


#: Ops whose int8 kernels (LiteRT, TFLM) take only one output quantization: SOFTMAX and LOGISTIC map [0, 1]
#: onto int8 in steps of 1/256, TANH maps [-1, 1] in steps of 1/128 (overload name -> (scale, zero point)).
_FIXED_OUTPUT_QPARAMS = {
    "softmax.int": (1 / 256, -128), "_softmax.default": (1 / 256, -128), "_safe_softmax.default": (1 / 256, -128),
    "sigmoid.default": (1 / 256, -128), "tanh.default": (1 / 128, 0),
}
#: Ops that make a new value range: a quantized input and an observer of their own on the output. PReLU's
#: slopes become a per-tensor int8 weight (TFLM's PRELU takes one scale for them).
_OWN_OUTPUT = ("prelu.default", "hardswish.default", "leaky_relu.default")
#: The same for ops of two run-time tensors (litert-torch's own annotators miss them; a residual Add of
#: MobileNetV2 at 96x96 stayed float: 31 of 91 ops).
_BINARY = ("add.Tensor", "add_.Tensor", "sub.Tensor", "mul.Tensor")
#: Ops whose output lies within their input's range: the output shares the input's quantization, as the int8
#: kernels of MAX_POOL_2D, AVERAGE_POOL_2D and CONCATENATION require and PAD, RESIZE_NEAREST_NEIGHBOR, MEAN and
#: the layout ops run fastest with (no rescaling).
_SHARED_OUTPUT = (
    "max_pool2d.default", "avg_pool2d.default", "adaptive_avg_pool2d.default", "mean.dim", "mean.default",
    "constant_pad_nd.default", "pad.default", "upsample_nearest2d.vec", "upsample_nearest2d.default",
    "permute.default", "view.default", "reshape.default", "flatten.using_ints", "squeeze.dim", "squeeze.dims",
    "unsqueeze.default", "transpose.int", "contiguous.default", "clone.default", "slice.Tensor",
)


def _aten_ops(names: Any) -> dict[Any, str]:
    """``{torch.ops.aten.<packet>.<overload>: name}`` for the overloads this torch has."""
    import torch

    found = {}
    for name in names:
        packet, overload = name.split(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is not None:
            found[op] = name
    return found


def _int8_quantizer(base: type, keep_float: frozenset[str] = frozenset()) -> type:
    """litert-torch's PT2E quantizer, also annotating the ops its own annotator leaves float; the graph nodes
    named in ``keep_float`` stay float (their annotations are removed, and nothing annotates them again).

    Its annotators find most ops through ``source_fn_stack``, which ``torch.export(strict=False)`` leaves empty,
    and know no PReLU, Tanh, HardSwish or LeakyReLU: such ops stay float between a DEQUANTIZE and a QUANTIZE
    (the mcu target refuses them), or the converter gives them a neighbour's scale (a Tanh concatenated with a
    Sigmoid got [0, 1) and lost its negative half). Every op of the tables above, and every concat, that is still
    unannotated gets the specs its int8 TFLite kernel wants (``_Int8Annotator``). The graph is walked in order,
    so an op's producer is annotated before the op.
    """
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec

    annotator = _Int8Annotator()

    class Int8Quantizer(base):  # type: ignore[misc, valid-type]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.name in keep_float:
                    node.meta.pop("quantization_annotation", None)
            config = self.global_config
            if config is None or config.input_activation is None:
                return model
            act_in, act_out = get_input_act_qspec(config), get_output_act_qspec(config)
            for node in model.graph.nodes:
                if (node.op != "call_function" or _annotated(node) or not _is_float_tensor(node)
                        or node.name in keep_float):
                    continue
                spec = annotator.annotation(node, act_in, act_out)
                if spec is not None:
                    node.meta["quantization_annotation"] = spec
            return model

    return Int8Quantizer


def _annotated(node: Any) -> bool:
    """Whether a quantizer has annotated ``node``."""
    annotation = node.meta.get("quantization_annotation")
    return annotation is not None and bool(getattr(annotation, "_annotated", False))


def _has_output_qspec(node: Any) -> bool:
    """Whether ``node`` is annotated with a quantization of its output."""
    return _annotated(node) and node.meta["quantization_annotation"].output_qspec is not None


def _fixed_output(node: Any) -> bool:
    """Whether ``node``'s output has a fixed quantization: its own (a Sigmoid's) or, through ops that share
    their first input's, a producer's (a max pool after a Sigmoid)."""
    import torch
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, SharedQuantizationSpec

    while _has_output_qspec(node):
        spec = node.meta["quantization_annotation"].output_qspec
        if not isinstance(spec, SharedQuantizationSpec):
            return isinstance(spec, FixedQParamsQuantizationSpec)
        node = node.args[0]
        if not isinstance(node, torch.fx.Node):
            return False
    return False


class _Int8Annotator:
    """The annotation each op left float needs for its int8 TFLite kernel (see ``_int8_quantizer``)."""

    def __init__(self) -> None:
        import torch
        from torchao.quantization.pt2e.observer import MinMaxObserver
        from torchao.quantization.pt2e.quantizer import QuantizationSpec

        self.fixed = {op: _FIXED_OUTPUT_QPARAMS[name] for op, name in _aten_ops(_FIXED_OUTPUT_QPARAMS).items()}
        self.own = set(_aten_ops(_OWN_OUTPUT))
        self.binary = set(_aten_ops(_BINARY))
        self.shared = set(_aten_ops(_SHARED_OUTPUT))
        self.cat = torch.ops.aten.cat.default
        self.prelu = torch.ops.aten.prelu.default
        self.slopes = QuantizationSpec(
            dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
            observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
        )

    def annotation(self, node: Any, act_in: Any, act_out: Any) -> Any:
        """The QuantizationAnnotation for ``node`` (an unannotated float op), or None to leave it as it is."""
        import torch

        tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if node.target == self.cat:
            return self._concat(node, act_out)
        if node.target in self.fixed:
            return self._fixed(node, tensors, act_in)
        if node.target == self.prelu:
            return self._prelu(node, act_in, act_out)
        if node.target in self.own or node.target in self.binary:
            return self._own_output(node, tensors, act_in, act_out)
        if node.target in self.shared:
            return self._shared_output(node, tensors, act_in)
        return None

    @staticmethod
    def _concat(node: Any, act_out: Any) -> Any:
        """A concat of activations: one scale for all, observed on the output."""
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        inputs = list(node.args[0])
        if not inputs or not all(_is_activation(a) for a in inputs):
            return None
        # One scale for all (TFLM's int8 CONCATENATION copies bytes), observed on the output, so it
        # covers every input. An input of fixed scale (a Sigmoid's) gets no spec here: the
        # converter drops a DEQUANTIZE-QUANTIZE pair but inserts the QUANTIZE a scale change needs.
        return QuantizationAnnotation(
            input_qspec_map={a: SharedQuantizationSpec(node) for a in inputs if not _fixed_output(a)},
            output_qspec=act_out, _annotated=True,
        )

    def _fixed(self, node: Any, tensors: list[Any], act_in: Any) -> Any:
        """Softmax, Sigmoid, Tanh: the output quantization their int8 kernels fix."""
        import torch
        from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationAnnotation

        if not tensors or not _is_activation(tensors[0]):
            return None
        scale, zero_point = self.fixed[node.target]
        return QuantizationAnnotation(
            input_qspec_map={tensors[0]: act_in},
            output_qspec=FixedQParamsQuantizationSpec(
                dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128, quant_max=127,
                qscheme=torch.per_tensor_affine,
            ),
            _annotated=True,
        )

    def _prelu(self, node: Any, act_in: Any, act_out: Any) -> Any:
        """PReLU: its slopes a per-tensor int8 weight, its output observed."""
        import torch
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        x, weight = node.args[0], node.args[1]
        if not _is_activation(x) or not isinstance(weight, torch.fx.Node):
            return None
        return QuantizationAnnotation(
            input_qspec_map={x: act_in, weight: self.slopes}, output_qspec=act_out, _annotated=True
        )

    def _own_output(self, node: Any, tensors: list[Any], act_in: Any, act_out: Any) -> Any:
        """Ops of one or two activations that make a new range: quantized inputs, the output observed."""
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        if len(tensors) != (2 if node.target in self.binary else 1) or not all(map(_is_activation, tensors)):
            return None
        return QuantizationAnnotation(
            input_qspec_map={a: act_in for a in tensors}, output_qspec=act_out, _annotated=True
        )

    @staticmethod
    def _shared_output(node: Any, tensors: list[Any], act_in: Any) -> Any:
        """Ops whose output lies within their input's range: the output shares the input's quantization."""
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        if not tensors or not _is_activation(tensors[0]):
            return None
        x = tensors[0]
        # Reuse the producer's observer where it has one; the same spec object is merged with it.
        return QuantizationAnnotation(
            input_qspec_map={x: SharedQuantizationSpec(x) if _has_output_qspec(x) else act_in},
            output_qspec=SharedQuantizationSpec((x, node)), _annotated=True,
        )


def _is_float_tensor(node: Any) -> bool:
    value = node.meta.get("val")
    return getattr(value, "dtype", None) is not None and value.dtype.is_floating_point


def _is_activation(node: Any) -> bool:
    """A float tensor computed at run time (not a weight or a constant)."""
    import torch

    return isinstance(node, torch.fx.Node) and node.op in ("call_function", "placeholder") and _is_float_tensor(node)


@functools.lru_cache(maxsize=1)
def _register_prelu_lowering() -> None:
    """Teach litert-torch to lower ``aten._prelu_kernel`` to one TFL PRELU op (it has no lowering of its own:
    it decomposes PReLU into RELU, MUL and SUB, which an INT8 model keeps float between a DEQUANTIZE and a
    QUANTIZE, and a microcontroller build refuses). The op reaches the lowering only inside ``_prelu_as_one_op``."""
    import torch
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend.lowerings import registry, utils

    @registry.lower(torch.ops.aten._prelu_kernel.default)
    def _prelu(lctx: Any, x: Any, slopes: Any) -> Any:
        # TFLite's PRELU takes slopes of one rank less than the input, broadcast on its trailing axes; the
        # channels-last pass hands them over as [1, 1, 1, C].
        x_type, s_type = ir.RankedTensorType(x.type), ir.RankedTensorType(slopes.type)
        shape = list(s_type.shape)
        while len(shape) > x_type.rank - 1 and shape[0] == 1:
            shape.pop(0)
        shape = [1] * (x_type.rank - 1 - len(shape)) + shape
        if shape != list(s_type.shape):
            slopes = stablehlo.reshape(ir.RankedTensorType.get(shape, s_type.element_type), slopes)
        # litert-torch's carrier for a TFL op (as its torch_tfl lowerings write them); its converter makes the op.
        return stablehlo.custom_call(
            result=utils.node_meta_to_ir_types(lctx.node),
            inputs=[x, slopes],
            call_target_name=ir.StringAttr.get("tfl.prelu"),
            has_side_effect=ir.BoolAttr.get(False),
            backend_config=ir.StringAttr.get(str(ir.DictAttr.get({}))),
        )


@contextlib.contextmanager
def _prelu_as_one_op() -> Iterator[None]:
    """While converting, keep ``aten._prelu_kernel`` out of litert-torch's decomposition tables, so that it
    reaches the PRELU lowering; the tables are restored after."""
    import torch
    from litert_torch.fx_infra import decomp

    _register_prelu_lowering()
    op = torch.ops.aten._prelu_kernel.default
    # torch.export's CustomDecompTable answers ``in`` and ``[]``; its ``get`` finds nothing.
    tables = decomp.pre_convert_decomp(), decomp.pre_lower_decomp()
    before_convert, before_lower = (table[op] if op in table else None for table in tables)  # noqa: SIM401
    decomp.remove_pre_lower_decomp(op)  # from both tables
    try:
        yield
    finally:
        if before_convert is not None:
            decomp.add_pre_convert_decomp(op, before_convert)  # into both tables
        if before_lower is not None:
            decomp.add_pre_lower_decomp(op, before_lower)


def _convert_int8(
    module: Any, wrapper: Any, args: tuple, spec: InputSpec, in_perm: list, calibration: CalibrationSet,
    out: Path, source: str, observer: str, per_channel: bool, histogram_bins: int,
    keep_nodes: tuple[str, ...] = (),
) -> dict[str, Any]:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgec.compiler.modelio import one_torch_thread

    config = _observer_config(observer, per_channel, histogram_bins)
    try:
        with quiet_litert():
            graph = torch.export.export(wrapper, args, strict=False).module()
            keep = frozenset(_fx_names(graph.graph, keep_nodes))
            quantizer = _int8_quantizer(pt2e_quantizer.PT2EQuantizer, keep)().set_global(config)
            prepared = prepare_pt2e(graph, quantizer)
    except Exception as exc:
        raise _conversion_error(exc, source, "PT2E export for INT8", module) from None
    rows = 0
    # One thread: calibration runs one small batch at a time, where more threads mostly spin (4x slower on a
    # busy 2-core machine, measured on the digits CNN).
    with torch.no_grad(), quiet_litert(), one_torch_thread():
        for batch in _calibration_batches(spec, calibration, in_perm):
            prepared(*batch)
            rows += 1
    if rows == 0:
        raise CalibrationError(
            f"the calibration set gave no samples of batch {args[0].shape[0] if args else 1} for '{source}'",
            hint="pass --calib with at least one sample shaped like the model's input",
        )
    try:
        with quiet_litert(), _prelu_as_one_op():
            quantized = convert_pt2e(prepared, fold_quantize=False)
            edge = litert_torch.convert(quantized, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(out))
    except Exception as exc:
        raise _conversion_error(exc, source, "INT8 conversion", module) from None
    return {"calibration_rows": rows, "kept_float": sorted(keep)}


#: FX node names (op names) of the layers the accuracy fallback can keep float in a TFLite model.
_LAYER_OPS = frozenset({"conv2d", "conv1d", "conv_transpose2d", "linear", "matmul", "bmm", "mm", "addmm", "mul",
                        "add", "sub", "div", "cat", "mean", "prelu", "layer_norm", "softmax"})


def _fx_names(graph: Any, onnx_nodes: tuple[str, ...]) -> list[str]:
    """The nodes of an exported graph that ONNX nodes of the FP32 export correspond to (see ``_fx_map``)."""
    return list(_fx_map(graph, onnx_nodes).values())


def _fx_map(graph: Any, onnx_nodes: tuple[str, ...]) -> dict[str, str]:
    """ONNX node of the FP32 export -> the node of an exported graph it corresponds to.

    The dynamo exporter names each ONNX node ``node_<fx name>``, and FX names a graph's nodes ``<op>``,
    ``<op>_1``, ... in order; edgec's layout wrapper adds nodes of its own (a permute) that shift those counters,
    so nodes are matched by op name and rank among the model's own nodes, not by name. ONNX nodes named
    otherwise (a model exported through the TorchScript exporter) have no counterpart and are skipped.
    """
    import re

    wanted = {}
    for name in onnx_nodes:
        m = re.fullmatch(r"node_(.+?)(?:_(\d+))?", name)
        if m:
            wanted[(m.group(1), int(m.group(2) or 0))] = name
    counts: dict[str, int] = {}
    found = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op != "call_function" or len(stack) < 2:  # edgec's wrapper sits at the root of the stack
            continue
        m = re.fullmatch(r"(.+?)(?:_(\d+))?", node.name)
        base = m.group(1) if m else node.name
        rank = counts.get(base, 0)
        counts[base] = rank + 1
        # Only layers: an activation belongs to the layer before it (the quantizer annotates them as one
        # pattern), and stripping it alone breaks litert-torch's conversion.
        if (base, rank) in wanted and base in _LAYER_OPS:
            found[wanted[(base, rank)]] = node.name
    return found


def _convert_16x8(
    module: Any, wrapper: Any, args: tuple, spec: InputSpec, in_perm: list, calibration: CalibrationSet,
    out: Path, source: str, int16_nodes: tuple[str, ...], int16_ops: frozenset[str],
) -> dict[str, Any]:
    """Full integer with int16 activations and int8 weights (TFLite's 16x8) for the layers of ``int16_nodes``
    (nodes of the FP32 ONNX export), int8 everywhere else: the accuracy fallback of a full-integer target.

    litert-torch's converter cannot lower a PT2E graph that mixes int8 and int16 activations (it drops the
    requantization between them, leaving a CONV_2D with an int8 input and an int16 output), so this quantizes
    the FP32 .tflite with ai-edge-quantizer instead: a8w8 for every op it supports, a16w8 for the ops that
    compute those layers and for their producers and consumers (a tensor is int16 only where the ops writing
    and reading it are), with QUANTIZE ops re-encoding between the two. Which TFLite op computes an ONNX node
    is found by value: the FX node the ONNX node maps to (``_fx_map``), or the elementwise ops right after it
    (a batch norm or an activation the converter fuses), computes the same tensor as that op on a sample.
    ``int16_ops`` are the ops the runtime has 16x8 kernels for; a layer computed by another op is refused,
    naming it. ai-edge-quantizer has no PRELU: a PReLU model's 16x8 file keeps them float, which a
    full-integer target refuses (PReLU decomposed instead quantizes, but lost the real MTCNN ONet's
    decisions: 9% agreement with FP32).
    """
    import torch

    try:
        from ai_edge_quantizer import qtyping, quantizer
    except ImportError:
        raise missing_dependency("ai-edge-quantizer", "mcu", "16x8 layers in INT8 models") from None
    with tempfile.TemporaryDirectory(prefix="edgec-16x8-") as tmp:
        fp32 = Path(tmp) / "model.fp32.tflite"
        with _prelu_as_one_op():
            _convert_float(wrapper, args, fp32, source, module)
        graph = torch.export.export(wrapper, args, strict=False).module()
        computed_by, chosen = _ops_for_16x8(fp32, graph, args, int16_nodes, int16_ops, source)
        ops, names, _ = _graph(fp32)
        qt = quantizer.Quantizer(str(fp32))
        qt.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                             activation_num_bits=8, weight_num_bits=8)
        for i, op in chosen.items():
            scope = ";".join(names[t] for t in ops[i][2]) + ";"
            qt.add_static_config(regex=f"^{re.escape(scope)}$", operation_name=qtyping.TFLOperationName(op),
                                 activation_num_bits=16, weight_num_bits=8)
        rows = [{f"args_{k}": a.numpy() for k, a in enumerate(batch)}
                for batch in _calibration_batches(spec, calibration, in_perm)]
        if not rows:
            raise CalibrationError(f"the calibration set gave no samples for '{source}'",
                                   hint="pass --calib with at least one sample shaped like the model's input")
        try:
            with quiet_litert():
                result = qt.quantize(_min_max_ranges(qt, rows), enable_progress_report=False)
        except Exception as exc:
            raise QuantizationError(f"ai-edge-quantizer could not quantize '{source}' with 16x8 layers: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                    hint="build for --target arm, or report the model") from None
        out.write_bytes(result.quantized_model)
    return {
        "method": "ai-edge-quantizer static: int8 (a8w8), int16 activations (a16w8) for the kept layers",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 asymmetric per-tensor; int16 symmetric per-tensor for the kept layers",
        "int16_layers": list(computed_by),
        "merged_layers": [n for n in int16_nodes if n not in computed_by],
        "int16_ops": [op for _, op in sorted(chosen.items())],
        "calibration_rows": len(rows),
        "calibration_samples": len(calibration),
    }


def _ops_for_16x8(path: Path, graph: Any, args: tuple, int16_nodes: tuple[str, ...], int16_ops: frozenset[str],
                  source: str) -> tuple[dict[str, int], dict[int, str]]:
    """The ops of the FP32 .tflite at ``path`` that compute ``int16_nodes`` (node -> op index) and every op to
    give int16 activations (op index -> op): those, and the ops writing and reading their tensors."""
    computed_by = _tflite_ops_computing(path, graph, args, _fx_map(graph.graph, int16_nodes))
    ops, _, _ = _graph(path)
    producer = {t: i for i, (_, _, outs) in enumerate(ops) for t in outs}
    consumers: dict[int, list[int]] = {}
    for i, (_, ins, _) in enumerate(ops):
        for t in ins:
            consumers.setdefault(t, []).append(i)
    if not computed_by:
        raise QuantizationError(
            f"no op of the TFLite model of '{source}' computes the layers {list(int16_nodes)} (the converter "
            "merged them into others), so they cannot be given int16 activations",
            hint="build for --target arm (float layers are allowed there), or give more representative --calib "
                 "data",
        )
    chosen: dict[int, str] = {}
    # A layer merged into another op (a Mul folded into a convolution's weights) has no op of its own: skipped.
    for node, index in computed_by.items():
        op = ops[index][0]
        if op not in int16_ops:
            raise QuantizationError(
                f"layer '{node}' of '{source}' needs int16 activations, but its TFLite op {op} has no 16x8 "
                "kernel on this target",
                hint="build for --target arm (float layers are allowed there), or replace the op",
            )
        chosen[index] = op
        # The layer's inputs and outputs at 16 bits: their producers and consumers are a16 too, where
        # they have the kernel (else that tensor is re-encoded at 8 bits).
        near = [producer[t] for t in ops[index][1] if t in producer]
        near += [c for t in ops[index][2] for c in consumers.get(t, [])]
        chosen.update((i, ops[i][0]) for i in near if ops[i][0] in int16_ops)
    return computed_by, chosen


def _min_max_ranges(qt: Any, rows: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """ai-edge-quantizer's calibration of each sample on its own, merged by min/max: its own merge over a set is a
    moving average (0.95), which leaves held-out values outside ranges that every sample set."""
    ranges: dict[str, Any] = {}
    for row in rows:
        for name, qsv in qt.calibrate({"serving_default": [row]}, num_threads=1).items():
            seen = ranges.setdefault(name, qsv)
            if seen is not qsv and "min" in qsv and "max" in qsv:
                seen["min"] = np.minimum(seen["min"], qsv["min"])
                seen["max"] = np.maximum(seen["max"], qsv["max"])
    return ranges


def _tflite_ops_computing(path: Path, graph: Any, args: tuple, fx_of: dict[str, str]) -> dict[str, int]:
    """ONNX node -> index of the op of the FP32 .tflite at ``path`` that computes it: the first op whose
    output equals, on ``args``, the output of its FX node or of the elementwise ops that follow it alone
    (a batch norm, an activation: ops the converter fuses into the layer's op). Feature maps are compared in
    both layouts."""
    import torch

    wanted = set(fx_of.values())
    chains: dict[str, list[Any]] = {}
    for node in graph.graph.nodes:
        if node.name in wanted:
            chain, cur = [node], node
            while len(cur.users) == 1 and len(chain) < 4:
                (cur,) = cur.users
                if cur.op != "call_function":
                    break
                chain.append(cur)
            chains[node.name] = chain
    needed = {n.name for chain in chains.values() for n in chain}
    values: dict[str, np.ndarray] = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if n.name in needed and isinstance(result, torch.Tensor):
                values[n.name] = result.detach().float().numpy()
            return result

    with torch.no_grad():
        Capture(graph).run(*args)
    ops, _, _ = _graph(path)
    with quiet_litert():
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
        interp.get_signature_runner()(**{f"args_{k}": a.numpy() for k, a in enumerate(args)})
    outputs = []
    for _, _, outs in ops:
        try:
            outputs.append(np.asarray(interp.get_tensor(outs[0]), dtype=np.float32) if outs else None)
        except ValueError:
            outputs.append(None)

    def same(a: np.ndarray, b: np.ndarray | None) -> bool:
        if b is None or a.size != b.size:
            return False
        tol = 1e-3 * max(1.0, float(np.abs(a).max(initial=0.0)))
        layouts = [a] + ([a.transpose(0, 2, 3, 1)] if a.ndim == 4 else [])
        return any(x.shape == b.shape and float(np.abs(x - b).max(initial=0.0)) <= tol for x in layouts)

    found = {}
    for onnx_node, fx_name in fx_of.items():
        for n in chains.get(fx_name, []):
            if n.name not in values:
                continue
            index = next((i for i, v in enumerate(outputs) if same(values[n.name], v)), None)
            if index is not None:
                found[onnx_node] = index
                break
    return found


def _to_dynamic_int8(src: Path, out: Path) -> None:
    """int8 FULLY_CONNECTED weights per output channel, activations float and quantized per call by the kernel
    (TFLite's dynamic-range quantization, through ai-edge-quantizer): what attention models need, whose
    activation outliers no static range holds (a full-integer BERT-style encoder loses its embeddings)."""
    try:
        from ai_edge_quantizer import qtyping, quantizer
    except ImportError:
        raise missing_dependency("ai-edge-quantizer", "arm", "dynamic-range INT8 TFLite models") from None
    q = quantizer.Quantizer(str(src))
    q.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName.FULLY_CONNECTED, num_bits=8,
                         granularity=qtyping.QuantGranularity.CHANNELWISE)
    try:
        with quiet_litert():
            result = q.quantize()
    except Exception as exc:
        raise QuantizationError(
            f"ai-edge-quantizer could not quantize the weights of '{src.name}': {' '.join(str(exc).split())[:300]}",
            hint="set target_options: {tflite: {int8_mode: static}} in the recipe, or build fp32/fp16",
        ) from None
    out.write_bytes(bytes(result.quantized_model))


def is_attention_graph(graph: Any) -> bool:
    """Whether an exported torch graph holds attention: a softmax whose output (through view/transpose/dropout)
    is multiplied with another computed tensor."""
    import torch

    ops = torch.ops.aten
    softmax = {ops._softmax.default, ops.softmax.int}
    passing = {ops.view.default, ops.reshape.default, ops.transpose.int, ops.permute.default, ops.clone.default,
               ops.dropout.default, ops._to_copy.default, ops.expand.default, ops.contiguous.default}
    products = {ops.matmul.default, ops.bmm.default, ops.mm.default}
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in softmax:
            continue
        frontier = list(node.users)
        for _ in range(6):
            nxt = []
            for user in frontier:
                if user.target in products:
                    return True
                if user.target in passing:
                    nxt.extend(user.users)
            frontier = nxt
    return False


_PROBE = """import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
for d in interpreter.get_input_details():
    interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
interpreter.invoke()
"""


def probe(path: Path, source: str, what: str) -> None:
    """Load, allocate and run ``path`` once in a child process, before edgec opens it in its own: LiteRT
    aborts the whole process on some files it cannot handle (a full-integer BERT-style encoder from
    litert-torch: ``allocate_tensors`` raises SIGABRT), which would end the build with no message at all."""
    import signal
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                              timeout=600)
    except subprocess.TimeoutExpired:
        raise ExportError(f"LiteRT did not finish loading and running the {what} TFLite model of '{source}' "
                          "in 10 minutes", hint="build for another precision or target") from None
    if done.returncode == 0:
        return
    if done.returncode < 0:
        why = f"LiteRT crashed ({signal.Signals(-done.returncode).name}) loading the {what} TFLite model of '{source}'"
    else:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no message)"]
        why = f"LiteRT cannot run the {what} TFLite model of '{source}': {last[0][:300]}"
    raise ExportError(
        f"{why} (ops: {', '.join(read_ops(path))})",
        hint="build another precision for this target (fp32/fp16), or an ONNX target (--target cpu)",
    )


def _int8_interface(path: Path) -> bool:
    """Make float inputs (outputs) that sit right before a QUANTIZE (after a DEQUANTIZE) int8 in the file,
    as TensorFlow's converter does with inference_input_type=int8. litert-torch usually folds them already;
    returns whether the file changed."""
    try:
        from ai_edge_litert import _pywrap_modify_model_interface as mmi
    except ImportError:
        return False
    schema = _schema()
    int8 = schema.TensorType.INT8
    with quiet_litert():
        interp = _interpreter(path)
    io_types = [np.dtype(d["dtype"]) for d in (*interp.get_input_details(), *interp.get_output_details())]
    if not any(np.issubdtype(t, np.floating) for t in io_types):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "io.tflite"
        with quiet_litert():
            status = mmi.modify_model_interface(str(path), str(dst), int8, int8)
        if status != 0 or not dst.is_file() or dst.read_bytes() == path.read_bytes():
            return False
        path.write_bytes(dst.read_bytes())
    return True


def _check_observer(observer: str) -> None:
    """Refuse an unknown INT8 observer (calibration data is checked when the build is planned)."""
    if observer not in OBSERVERS:
        raise QuantizationError(
            f"unknown INT8 observer '{observer}'", hint=f"use one of: {', '.join(OBSERVERS)}"
        )


def _import_converter() -> Any:
    """torch, with litert-torch imported (quietly); a missing one names the extra to install."""
    try:
        import torch

        with quiet_litert():  # torchao, imported by litert-torch, prints about its optional CUDA kernels
            import litert_torch  # noqa: F401
    except ImportError as exc:
        raise missing_dependency(exc.name or "litert-torch", "arm", "converting to TFLite") from None
    return torch


def _check_concrete_shapes(spec: InputSpec, source: str) -> None:
    """Refuse a dynamic axis other than the batch: litert-torch makes graphs of concrete shapes."""
    for t in spec.inputs:
        inner = [(i, d) for i, d in enumerate(t.shape) if i > 0 and not isinstance(d, int)]
        if inner:
            axis, dim = inner[0]
            example = "x".join(
                str(d) if isinstance(d, int) else "1" if i == 0 else "N" for i, d in enumerate(t.shape)
            )
            raise ExportError(
                f"TFLite needs concrete shapes, but input '{t.name}' of '{source}' has the dynamic axis "
                f"'{dim}' (axis {axis}); only a dynamic batch (axis 0) is fixed at 1",
                hint=f"declare its size: --input {t.name}:{example}:{t.dtype}, N being the size on the device",
            )


def _auto_int8_mode(wrapper: Any, args: tuple, info: dict[str, Any]) -> str:
    """INT8 mode "auto": "dynamic" for an attention model, else "static"; the reason goes into ``info``."""
    import torch

    with quiet_litert():
        graph = torch.export.export(wrapper, args, strict=False).graph
    int8_mode = "dynamic" if is_attention_graph(graph) else "static"
    info["int8_mode_reason"] = ("auto: attention model: dynamic-range weights" if int8_mode == "dynamic"
                                else "auto: no attention: full integer")
    return int8_mode


def _convert_dynamic_int8(wrapper: Any, args: tuple, out: Path, source: str, module: Any) -> dict[str, Any]:
    """FP32 conversion, then dynamic-range INT8 weights; the quantization record."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.tflite"
        _convert_float(wrapper, args, fp32, source, module)
        _to_dynamic_int8(fp32, out)
    return {
        "method": "dynamic range (ai-edge-quantizer): int8 FULLY_CONNECTED weights per channel, float "
                  "activations quantized per call",
        "weights": "int8 symmetric per-channel", "activations": "float32",
    }


def _convert_fp16(wrapper: Any, args: tuple, out: Path, source: str, module: Any) -> dict[str, Any]:
    """FP32 conversion, then FP16 weights; the quantization record."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.tflite"
        _convert_float(wrapper, args, fp32, source, module)
        _to_fp16(fp32, out)
    return {"method": "ai-edge-quantizer float casting", "weights": "float16", "activations": "float32"}


def convert(
    module: Any,
    spec: InputSpec,
    precision: Precision,
    out: Path,
    calibration: CalibrationSet | None = None,
    *,
    channels_last_io: bool = True,
    observer: str = "histogram",
    per_channel: bool = True,
    histogram_bins: int = 2048,
    source: str | None = None,
    int8_mode: str = "static",
    keep_nodes: tuple[str, ...] = (),
    int16_nodes: tuple[str, ...] = (),
    int16_ops: frozenset[str] = frozenset(),
) -> TFLiteModel:
    """Convert a torch module to ``out`` (.tflite) at ``precision``.

    Args:
        module: the torch.nn.Module (an ExportedProgram's ``.module()`` works too).
        spec: its inputs and outputs; a dynamic batch (axis 0) is fixed at 1, other dynamic axes are refused
            (a TFLite graph from litert-torch has concrete shapes).
        precision: FP32; FP16 (FP16 weights, float32 I/O); INT8 (full integer, int8 I/O for float tensors).
        calibration: samples laid out like the spec (NCHW images), required for INT8.
        channels_last_io: image inputs (4-D float NCHW) become NHWC in the file, as TFLite runtimes expect.
        observer, per_channel, histogram_bins: the INT8 activation observer and weight granularity.
        source: what to call the model in messages (its checkpoint path).
        int8_mode: "static" (full integer, PT2E), "dynamic" (int8 FULLY_CONNECTED weights, float activations:
            not for microcontrollers), or "auto" (dynamic for attention models, static otherwise).
        keep_nodes: nodes of the FP32 ONNX export whose counterparts stay float in a static INT8 model (the
            accuracy fallback's choice; see ``_fx_names``).
        int16_nodes: nodes of the FP32 ONNX export computed with int16 activations in a static INT8 model
            (a full-integer target's accuracy fallback; see ``_convert_16x8``), by ops in ``int16_ops``.
    """
    source = source or type(module).__name__
    _check_observer(observer)
    torch = _import_converter()
    _check_concrete_shapes(spec, source)
    if isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        # litert-torch traces with torch.export, which cannot trace TorchScript: convert it first (checked).
        module = torchscript_to_exported(module, spec, source, "TFLite conversion")
    out = Path(out)
    in_perm, out_perm = _layout_plan(spec, channels_last_io)
    dynamic = {t.name: [d for d in t.shape if not isinstance(d, int)] for t in spec.inputs if t.is_dynamic}
    info: dict[str, Any] = {
        "converter": "litert-torch",
        "batch": spec.inputs[0].concrete_shape(1)[0] if spec.inputs and spec.inputs[0].shape else None,
    }
    if dynamic:
        info["dynamic_axes_fixed_at_1"] = dynamic
    started = time.perf_counter()
    wrapper = _wrap(module, in_perm, out_perm)
    args = _sample_args(spec, in_perm)
    if precision == Precision.INT8 and int8_mode == "auto":
        int8_mode = _auto_int8_mode(wrapper, args, info)
    if precision == Precision.INT8 and int8_mode == "dynamic":
        info["quantization"] = _convert_dynamic_int8(wrapper, args, out, source, module)
    elif precision == Precision.INT8 and int16_nodes:
        info["quantization"] = _convert_16x8(module, wrapper, args, spec, in_perm, calibration, out, source,
                                             int16_nodes, int16_ops)
        info["quantization"]["io_rewritten"] = _int8_interface(out)
    elif precision == Precision.INT8:
        info.update(
            _convert_int8(module, wrapper, args, spec, in_perm, calibration, out, source, observer,
                          per_channel, histogram_bins, keep_nodes)
        )
        probe(out, source, "INT8")  # before the interface rewrite opens it in this process
        info["quantization"] = {
            "method": "PT2E static (litert-torch PT2EQuantizer)",
            "observer": observer,
            "histogram_bins": histogram_bins if observer == "histogram" else None,
            "weights": "int8 symmetric per-channel" if per_channel else "int8 symmetric per-tensor",
            "activations": "int8 asymmetric per-tensor",
            "calibration_samples": len(calibration),
            "io_rewritten": _int8_interface(out),
        }
    elif precision == Precision.FP16:
        info["quantization"] = _convert_fp16(wrapper, args, out, source, module)
    else:
        _convert_float(wrapper, args, out, source, module)
    probe(out, source, precision.value)
    info["seconds"] = round(time.perf_counter() - started, 2)
    inputs, outputs = _describe_io(out, spec, in_perm, out_perm)
    return TFLiteModel(out, precision, inputs, outputs, read_ops(out), info)


__all__ = [
    "OBSERVERS", "LayerReader", "TFLiteIO", "TFLiteModel", "convert", "feeds_to_tflite",
    "module_from_tensor_name", "outputs_from_tflite", "quiet_litert", "read_ops",
]
