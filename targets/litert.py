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
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, ConfigError, ExportError, QuantizationError, missing_dependency
from edgec.compiler.modelio import torchscript_to_exported
from edgec.compiler.types import CalibrationSet, InputSpec, Precision, TensorSpec
from edgec.targets.pt2e import calibration_batches as _calibration_batches
from edgec.targets.pt2e import pick as _pick
from edgec.targets.pt2e import sample_args as _sample_args

#: The observers that collect INT8 activation ranges; histogram keeps the full logit range (see FIELD_NOTES).
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
    arrays = feeds_to_tflite(inputs, feeds)
    if all(a.shape == io_.shape for a, io_ in zip(arrays, inputs)):
        return outputs_from_tflite(outputs, invoke(arrays))
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
    per_row = [invoke([a[i:i + 1] for a in arrays]) for i in range(rows.pop())]
    stacked = [np.concatenate([r[k] for r in per_row]) for k in range(len(outputs))]
    return outputs_from_tflite(outputs, stacked)


def io_from_metadata(metadata: dict[str, Any], path: Path | str) -> tuple[list[TFLiteIO], list[TFLiteIO]]:
    """The inputs and outputs an artifact's manifest entry records (its ``io``), or a ConfigError."""
    io = metadata.get("io") or {}
    if not io.get("inputs"):
        raise ConfigError(
            f"the manifest entry of '{path}' has no 'io' record", hint="rebuild it with edgec build"
        )
    return [TFLiteIO.from_dict(d) for d in io["inputs"]], [TFLiteIO.from_dict(d) for d in io["outputs"]]

def read_ops(path: str | Path) -> list[str]:
    """Builtin op names in the flatbuffer (sorted, each once), for an op resolver.

    Custom ops appear as ``CUSTOM:<custom code>``.
    """
    schema = _schema()
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
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
# Converting.


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """Silence litert-torch's progress, torch's warnings and LiteRT's C++ logging, which writes to the
    process's stdout/stderr directly (errors still arrive as exceptions)."""
    from edgec.compiler.context import quiet_tools

    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                try:
                    saved_fds.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            with quiet_tools("litert_torch", "absl"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved in saved_fds:
                os.dup2(saved, fd)
                os.close(saved)
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


def _residual_add_quantizer(base: type) -> type:
    """litert-torch's PT2E quantizer, also annotating the adds its own annotator misses.

    Its ``add`` annotator finds adds through ``source_fn_stack``, which ``torch.export(strict=False)`` leaves
    empty, so every residual Add that is not folded into a following conv stays float (MobileNetV2 at 96x96:
    31 of 91 ops float, and the mcu target refuses it). Adds of two tensors left unannotated get the same input
    and output specs the annotator would have given them.
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    adds = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}

    class ResidualAddQuantizer(base):  # type: ignore[misc, valid-type]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            config = self.global_config
            if config is None:
                return model
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in adds:
                    continue
                annotation = node.meta.get("quantization_annotation")
                if annotation is not None and getattr(annotation, "_annotated", False):
                    continue
                inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if len(inputs) != 2 or not all(_is_float_tensor(a) for a in inputs):
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: get_input_act_qspec(config) for a in inputs},
                    output_qspec=get_output_act_qspec(config),
                    _annotated=True,
                )
            return model

    return ResidualAddQuantizer


def _is_float_tensor(node: Any) -> bool:
    value = node.meta.get("val")
    return getattr(value, "dtype", None) is not None and value.dtype.is_floating_point


def _convert_int8(
    module: Any, wrapper: Any, args: tuple, spec: InputSpec, in_perm: list, calibration: CalibrationSet,
    out: Path, source: str, observer: str, per_channel: bool, histogram_bins: int,
) -> dict[str, Any]:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgec.compiler.modelio import one_torch_thread

    config = _observer_config(observer, per_channel, histogram_bins)
    quantizer = _residual_add_quantizer(pt2e_quantizer.PT2EQuantizer)().set_global(config)
    try:
        with quiet_litert():
            graph = torch.export.export(wrapper, args, strict=False).module()
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
        with quiet_litert():
            quantized = convert_pt2e(prepared, fold_quantize=False)
            edge = litert_torch.convert(quantized, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(out))
    except Exception as exc:
        raise _conversion_error(exc, source, "INT8 conversion", module) from None
    return {"calibration_rows": rows}


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
    """
    source = source or type(module).__name__
    if observer not in OBSERVERS:
        raise QuantizationError(
            f"unknown INT8 observer '{observer}'", hint=f"use one of: {', '.join(OBSERVERS)}"
        )
    if precision == Precision.INT8 and calibration is None:
        raise QuantizationError(
            f"INT8 TFLite conversion of '{source}' needs calibration data",
            hint="pass --calib PATH (.npz, .npy, an image folder)",
        )
    try:
        import torch

        with quiet_litert():  # torchao, imported by litert-torch, prints about its optional CUDA kernels
            import litert_torch  # noqa: F401
    except ImportError as exc:
        raise missing_dependency(exc.name or "litert-torch", "arm", "converting to TFLite") from None
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
    if precision == Precision.INT8:
        info.update(
            _convert_int8(module, wrapper, args, spec, in_perm, calibration, out, source, observer,
                          per_channel, histogram_bins)
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
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.tflite"
            _convert_float(wrapper, args, fp32, source, module)
            _to_fp16(fp32, out)
        info["quantization"] = {"method": "ai-edge-quantizer float casting", "weights": "float16",
                                "activations": "float32"}
    else:
        _convert_float(wrapper, args, out, source, module)
    probe(out, source, precision.value)
    info["seconds"] = round(time.perf_counter() - started, 2)
    inputs, outputs = _describe_io(out, spec, in_perm, out_perm)
    return TFLiteModel(out, precision, inputs, outputs, read_ops(out), info)


__all__ = [
    "OBSERVERS", "TFLiteIO", "TFLiteModel", "convert", "feeds_to_tflite", "outputs_from_tflite",
    "quiet_litert", "read_ops",
]
