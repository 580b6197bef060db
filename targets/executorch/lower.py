"""Torch model -> ExecuTorch program (.pte) for the XNNPACK backend: FP32, FP16, INT8 (PT2E, XNNPACKQuantizer).

``torch.export`` -> (INT8: ``prepare_pt2e`` with ExecuTorch's XNNPACKQuantizer, calibration, ``convert_pt2e``,
export again) -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` -> ``.to_executorch()``.
Ops XNNPACK does not take stay in the program and run on ExecuTorch's portable kernels; ops outside the core
ATen opset cannot be lowered at all and are refused by name.

The written program is loaded and run once in ExecuTorch's runtime on a few samples before it is described
(``check``): FP32 must match torch; the outputs become the expected outputs of the bundled program (``.bpte``),
which a device checks itself against. torch and executorch are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import NativeOutput
from edgec.compiler.errors import (
    CalibrationError,
    ExportError,
    QuantizationError,
    TargetBuildError,
    missing_dependency,
)
from edgec.compiler.modelio import output_names_for, torchscript_to_exported
from edgec.compiler.types import CalibrationSet, InputSpec, Precision
from edgec.targets.executorch.passes import float32_to_half, prelu_off_4d
from edgec.targets.pt2e import calibration_batches, sample_args

#: INT8 activation range observers: histogram (ExecuTorch's default for XNNPACK) or minmax.
OBSERVERS = ("histogram", "minmax")
#: The suffix of the bundled program written beside ``model.<precision>.pte``.
BUNDLE_SUFFIX = ".bpte"
#: The FP32 program must give torch's outputs within this (times the output's scale, at least 1).
FP32_TOLERANCE = 1e-4
#: How the wrappers below nest the user's module: their attribute names, outermost first.
_WRAPPER_ATTRS = ("model",)


@dataclasses.dataclass
class PteIO:
    """One input or output of a .pte's ``forward``, matched by position to the spec tensor of the same name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PteIO:
        return cls(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"])


@dataclasses.dataclass
class PteModel:
    """A .pte written by ``lower`` and what it holds."""

    path: Path
    precision: Precision
    inputs: list[PteIO]
    outputs: list[PteIO]
    #: How it was made: delegation, fixed batch, seconds, quantization, the runtime check (JSON-ready).
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    bundle: Path | None = None


# ----------------------------------------------------------------------------------------------------------
# Native logs.


def _flush_c_stdio() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def native_output() -> Iterator[NativeOutput]:
    """Hold back what ExecuTorch's C++ side writes to the process's stdout/stderr (cpuinfo probing, "Missing
    operator" lines) and Python warnings; the text is kept on the yielded object for error messages."""
    from edgec.compiler.context import native_output as native_fds
    from edgec.compiler.context import quiet_tools

    text = io.StringIO()
    captured = None
    # ExecuTorch logs through C stdio, fully buffered when stdout is not a terminal: flushed before restoring.
    try:
        with native_fds(before_restore=_flush_c_stdio) as captured:
            # The runtime's log lines may also arrive through Python's sys.stdout (pybind's print); quiet_tools
            # holds back Python warnings.
            with quiet_tools("executorch"), contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield captured
    finally:
        if captured is not None:
            captured.text += text.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Running a .pte (shared by the runner and the build's check).


def load_method(path_or_bytes: Path | bytes, threads: int | None = None) -> Any:
    """The ``forward`` method of a program in ExecuTorch's Python runtime (its native logs held back); a
    RuntimeError naming the missing kernels when the runtime lacks some."""
    try:
        with native_output():
            from executorch.runtime import Runtime
    except ImportError:
        raise missing_dependency("executorch", "executorch", "running .pte artifacts") from None
    failure = None
    with native_output() as logs:
        try:
            if threads:
                from executorch.extension.pybindings import portable_lib

                if portable_lib._threadpool_get_thread_count() != threads:
                    portable_lib._unsafe_reset_threadpool(threads)
            program = Runtime.get().load_program(path_or_bytes)
            method = program.load_method("forward")
        except Exception as exc:
            failure = exc
    if failure is not None:  # the logs are read once the block has closed
        raise _runtime_error(failure, logs) from None
    # The program must outlive the method: keep it on the method's wrapper.
    method._edgec_program = program
    return method


def _runtime_error(exc: BaseException, logs: NativeOutput) -> Exception:
    """Returns a RuntimeError whose message carries the missing operators the runtime logged."""
    missing = sorted(set(re.findall(r"Missing operator: \[\d+\] (\S+)", logs.text)))
    if missing:
        return RuntimeError(f"ExecuTorch's runtime has no kernel for {', '.join(missing)}")
    return exc if isinstance(exc, RuntimeError) else RuntimeError(f"{type(exc).__name__}: {exc}")


def execute(method: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One call of ``forward`` on numpy arrays (shaped like the program's inputs); numpy outputs."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in method.execute(tensors)]


# ----------------------------------------------------------------------------------------------------------
# Lowering.


def _check_shapes(spec: InputSpec, source: str) -> dict[str, list[str]]:
    """The dynamic axes fixed at 1 (a dynamic batch); any other dynamic axis is refused, naming it."""
    for t in spec.inputs:
        inner = [(i, d) for i, d in enumerate(t.shape) if i > 0 and not isinstance(d, int)]
        if inner:
            axis, dim = inner[0]
            example = "x".join(
                str(d) if isinstance(d, int) else "1" if i == 0 else "N" for i, d in enumerate(t.shape)
            )
            raise ExportError(
                f"the executorch target plans its memory for fixed shapes, but input '{t.name}' of '{source}' "
                f"has the dynamic axis '{dim}' (axis {axis}); only a dynamic batch (axis 0) is fixed at 1",
                hint=f"declare its size: --input {t.name}:{example}:{t.dtype}, N being the size on the device",
            )
    return {t.name: [d for d in t.shape if not isinstance(d, int)] for t in spec.inputs if t.is_dynamic}


def _wrap(module: Any) -> Any:
    """The model with positional inputs and a flat tuple of outputs."""
    import torch

    from edgec.compiler.modelio import flatten_outputs

    class Flat(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.model = inner

        def forward(self, *args: Any) -> tuple:
            return tuple(flatten_outputs(self.model(*args)))

    flat = Flat(module)
    # Not .eval(): an ExportedProgram's module refuses train(); the wrapper itself has no training mode.
    flat.training = False
    return flat


def _half_io(gm: Any) -> Any:
    """A half-precision graph behind float32 inputs and outputs (the casts run at the program's edges)."""
    import torch

    class HalfIO(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.model = inner

        def forward(self, *args: Any) -> tuple:
            args = tuple(a.half() if a.is_floating_point() else a for a in args)
            return tuple(o.float() if o.is_floating_point() else o for o in self.model(*args))

    wrapper = HalfIO(gm)
    wrapper.training = False
    return wrapper


def _module_path(node: Any) -> str | None:
    """The user's module an FX node came from ("block.conv1 (Conv2d)"), without edgec's wrapper."""
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    path = str(path)
    for prefix in _WRAPPER_ATTRS:
        if path == prefix:
            path = ""
        elif path.startswith(prefix + "."):
            path = path[len(prefix) + 1:]
    name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
    return f"{path} ({name})" if path else None


def _where(op: str, *graphs: Any) -> str | None:
    """Where the first node calling ``op`` ("aten.cumprod.default") sits, from the first graph that says."""
    for gm in graphs:
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op == "call_function" and _op_name(node.target) == op:
                where = _module_path(node)
                if where:
                    return where
    return None


def _op_name(target: Any) -> str:
    """"aten.cumprod.default" for torch.ops.aten.cumprod.default and for its edge-dialect twin."""
    text = str(target)
    m = re.match(r"<EdgeOpOverload: ([^>]+)>", text)
    return m.group(1) if m else text


def _lowering_error(exc: BaseException, source: str, what: str, graphs: tuple) -> ExportError:
    text = " ".join(str(exc).split())
    m = re.search(r"Operator (?:torch\._ops\.)?(aten\.\S+?) is not in Core ATen opset", text)
    if m:
        op = m.group(1).rstrip(".,\"'")
        where = _where(op, *graphs)
        in_module = f" in module {where}" if where else ""
        short = op.split(".")[1]
        return ExportError(
            f"ExecuTorch cannot lower the op {op}{in_module} of '{source}': it is not in the core ATen opset "
            "that .pte programs are made of",
            hint=f"rewrite that part of the model without {short}, or build for a target that runs ONNX "
            "(e.g. --target cpu)",
        )
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        text = f"{text} ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return ExportError(
        f"ExecuTorch cannot lower '{source}' ({what}): {type(exc).__name__}: {text[:400] or '(no message)'}",
        hint="the message names the failing op or construct; rewrite it in the model, or build for an ONNX "
        "target (e.g. --target cpu)",
    )


def _export(wrapper: Any, args: tuple, source: str, what: str, module: Any) -> Any:
    import torch

    from edgec.compiler.context import quiet_tools

    try:
        with quiet_tools():
            return torch.export.export(wrapper, args, strict=False)
    except Exception as exc:
        raise _lowering_error(exc, source, what, (module,)) from None


def _observer_config(observer: str, per_channel: bool) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    if observer == "minmax":
        act = dataclasses.replace(
            config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12)
        )
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return config


def _quantize(
    exported: Any, args: tuple, spec: InputSpec, calibration: CalibrationSet, source: str, module: Any,
    observer: str, per_channel: bool,
) -> tuple[Any, int]:
    """The exported INT8 program (quantize/dequantize pairs XNNPACK folds into its int8 kernels) and the
    number of calibration calls."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgec.compiler.context import quiet_tools
    from edgec.compiler.modelio import one_torch_thread

    quantizer = XNNPACKQuantizer().set_global(_observer_config(observer, per_channel))
    try:
        with quiet_tools():
            prepared = prepare_pt2e(exported.module(), quantizer)
    except Exception as exc:
        raise _lowering_error(exc, source, "PT2E preparation for INT8", (exported.graph_module, module)) from None
    calls = 0
    # One thread: calibration runs one small batch at a time, where more threads mostly spin.
    with torch.no_grad(), quiet_tools(), one_torch_thread():
        for batch in calibration_batches(spec, calibration):
            prepared(*batch)
            calls += 1
    if calls == 0:
        raise CalibrationError(
            f"the calibration set gave no samples of batch {args[0].shape[0] if args else 1} for '{source}'",
            hint="pass --calib with at least one sample shaped like the model's input",
        )
    try:
        with quiet_tools():
            converted = convert_pt2e(prepared)
    except Exception as exc:
        raise QuantizationError(
            f"PT2E could not convert the calibrated model of '{source}' to INT8: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}",
            hint="build fp32 for this target, or INT8 for another (e.g. --target cpu)",
        ) from None
    return _export(converted, args, source, "export of the INT8 model", module), calls


def _delegation(program: Any) -> dict[str, Any]:
    """How much of the lowered graph XNNPACK took: its delegate calls, and the ops left to portable kernels."""
    delegates = 0
    portable: dict[str, int] = {}
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if "executorch_call_delegate" in name:
            delegates += 1
        elif "getitem" not in name:
            portable[name] = portable.get(name, 0) + 1
    return {"backend": "XnnpackBackend", "delegate_calls": delegates, "portable_ops": dict(sorted(portable.items()))}


def _check_samples(spec: InputSpec, calibration: CalibrationSet | None, count: int) -> list[tuple]:
    """Up to ``count`` argument tuples to check the program with: calibration samples, else random ones."""
    import torch

    found: list[tuple] = []
    if calibration is not None:
        for args in calibration_batches(spec, calibration):
            found.append(args)
            if len(found) >= count:
                return found
    if found:
        return found
    return [
        tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in spec.example_feeds(batch=1, seed=s).values())
        for s in range(max(1, count))
    ]


def _compare(want: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, largest |reference|) over float outputs."""
    worst, scale = 0.0, 0.0
    for w, g in zip(want, got):
        if not np.issubdtype(w.dtype, np.floating) or w.shape != g.shape:
            continue
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        if not np.all(np.isfinite(g64[np.isfinite(w64)])):
            return float("inf"), scale
        worst = max(worst, float(np.max(np.abs(w64 - g64), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(w64), initial=0.0)))
    return worst, scale


def _check(
    buffer: bytes, wrapper_fp32: Any, samples: list[tuple], precision: Precision, source: str
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Run the program on ``samples`` in ExecuTorch's runtime: its outputs per sample, and how far they are
    from torch's (the FP32 model)."""
    import torch

    try:
        method = load_method(buffer)
        outputs = [execute(method, [a.numpy() for a in args]) for args in samples]
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        m = re.search(r"no kernel for (.+)$", text)
        if m:
            raise ExportError(
                f"ExecuTorch's runtime cannot run the {precision.value} program of '{source}': it has no kernel "
                f"for {m.group(1)}",
                hint="rewrite that part of the model, or build for a target that runs ONNX (e.g. --target cpu)",
            ) from None
        raise TargetBuildError(
            f"ExecuTorch's runtime cannot run the {precision.value} program of '{source}': {text[:300]}",
            hint="build another precision for this target, or an ONNX target (--target cpu)",
        ) from None
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for args, got in zip(samples, outputs):
            want = [t.detach().numpy() for t in wrapper_fp32(*args)]
            err, ref_scale = _compare(want, got)
            worst, scale = max(worst, err), max(scale, ref_scale)
    if not np.isfinite(worst):
        raise QuantizationError(
            f"the {precision.value} ExecuTorch program of '{source}' gives non-finite outputs where torch's are "
            "finite",
            hint="build fp32 (FP16 overflows beyond 65504; large constants such as attention masks do)"
            if precision == Precision.FP16 else "build fp32 for this target",
        )
    if precision == Precision.FP32 and worst > FP32_TOLERANCE * max(1.0, scale):
        raise TargetBuildError(
            f"the FP32 ExecuTorch program of '{source}' differs from torch by {worst:.3g} "
            f"(allowed {FP32_TOLERANCE * max(1.0, scale):.3g})",
            hint="report it with the model; build an ONNX target (--target cpu) meanwhile",
        )
    return outputs, {"samples": len(samples), "max_abs_error_vs_torch": float(f"{worst:.4g}"),
                     "reference_scale": float(f"{scale:.4g}")}


def _bundle(manager: Any, samples: list[tuple], outputs: list[list[np.ndarray]], out: Path) -> Path:
    """The bundled program: the same program plus test cases (inputs and the host runtime's outputs)."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    cases = [
        MethodTestCase(inputs=list(args), expected_outputs=[torch.from_numpy(np.ascontiguousarray(o)) for o in outs])
        for args, outs in zip(samples, outputs)
    ]
    with native_output():
        data = serialize_from_bundled_program_to_flatbuffer(BundledProgram(manager, [MethodTestSuite("forward", cases)]))
    path = out.with_suffix(BUNDLE_SUFFIX)
    path.write_bytes(data)
    return path


def lower(
    module: Any,
    spec: InputSpec,
    precision: Precision,
    out: Path,
    calibration: CalibrationSet | None = None,
    *,
    observer: str = "histogram",
    per_channel: bool = True,
    bundle_samples: int = 4,
    source: str | None = None,
) -> PteModel:
    """Lower a torch module to ``out`` (.pte) at ``precision``, for ExecuTorch's XNNPACK backend.

    Args:
        module: the torch.nn.Module (an ExportedProgram's ``.module()`` or a TorchScript module works too).
        spec: its inputs and outputs; a dynamic batch (axis 0) is fixed at 1, other dynamic axes are refused.
        precision: FP32; FP16 (half weights and compute, float32 I/O); INT8 (XNNPACKQuantizer: int8
            activations per tensor, int8 weights per channel; float32 I/O).
        calibration: samples laid out like the spec, required for INT8.
        observer, per_channel: the INT8 activation observer and weight granularity.
        bundle_samples: test cases in the bundled program written beside ``out`` (0: none is written).
        source: what to call the model in messages (its checkpoint path).
    """
    source = source or type(module).__name__
    if observer not in OBSERVERS:
        raise QuantizationError(f"unknown INT8 observer '{observer}'", hint=f"use one of: {', '.join(OBSERVERS)}")
    dynamic = _check_shapes(spec, source)
    try:
        import torch

        with native_output():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise missing_dependency(exc.name or "executorch", "executorch", "the executorch target") from None
    if isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        module = torchscript_to_exported(module, spec, source, "ExecuTorch lowering")
    started = time.perf_counter()
    out = Path(out)
    args = sample_args(spec)
    info: dict[str, Any] = {"batch": spec.inputs[0].concrete_shape(1)[0] if spec.inputs and spec.inputs[0].shape else None}
    if dynamic:
        info["dynamic_axes_fixed_at_1"] = dynamic
    with native_output():
        reference = _wrap(module)
        exported = _export(reference, args, source, "torch.export", module)
        # A copy: the unlifted module shares its parameters with ``module``, which stays the FP32 reference.
        graph = copy.deepcopy(exported.module())
        rewrites = prelu_off_4d(graph)
        if precision == Precision.FP16:
            rewrites += float32_to_half(graph)
            graph = _half_io(graph)
        if rewrites or precision == Precision.FP16:
            exported = _export(graph, args, source, "torch.export after edgec's rewrites", module)
    if rewrites:
        info["rewrites"] = rewrites
    if precision == Precision.INT8:
        with native_output():
            exported, calls = _quantize(exported, args, spec, calibration, source, module, observer, per_channel)
        info["quantization"] = {
            "method": "PT2E static (ExecuTorch XNNPACKQuantizer)",
            "observer": observer,
            "weights": "int8 symmetric per-channel" if per_channel else "int8 symmetric per-tensor",
            "activations": "int8 asymmetric per-tensor",
            "io": "float32 (quantized inside the program)",
            "calibration_samples": len(calibration),
            "calibration_calls": calls,
        }
    elif precision == Precision.FP16:
        info["quantization"] = {"method": "half weights and compute", "weights": "float16",
                                "activations": "float16", "io": "float32 (cast inside the program)"}
    try:
        with native_output():
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            info["delegation"] = _delegation(edge.exported_program())
            manager = edge.to_executorch()
    except Exception as exc:
        raise _lowering_error(exc, source, f"{precision.value} lowering", (exported.graph_module, module)) from None
    buffer = manager.buffer
    samples = _check_samples(spec, calibration, max(1, bundle_samples))
    with torch.no_grad():
        outputs, info["check"] = _check(buffer, reference, samples, precision, source)
    out.write_bytes(buffer)
    bundle = _bundle(manager, samples, outputs, out) if bundle_samples > 0 else None
    names = [t.name for t in spec.outputs] or output_names_for(len(outputs[0]))
    if len(names) != len(outputs[0]):
        names = output_names_for(len(outputs[0]))
    inputs = [PteIO(t.name, tuple(a.shape), np.dtype(str(a.dtype).replace("torch.", "")).name)
              for t, a in zip(spec.inputs, samples[0])]
    outs = [PteIO(n, tuple(o.shape), o.dtype.name) for n, o in zip(names, outputs[0])]
    info["seconds"] = round(time.perf_counter() - started, 2)
    return PteModel(out, precision, inputs, outs, info, bundle)


__all__ = ["BUNDLE_SUFFIX", "OBSERVERS", "PteIO", "PteModel", "execute", "load_method", "lower", "native_output"]
