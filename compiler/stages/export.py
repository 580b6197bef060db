"""ExportStage: a loaded model to a clean FP32 ONNX file.

Torch models go through the dynamo exporter (onnxscript), falling back to the TorchScript exporter only when
dynamo fails (the manifest records which one ran and why). Every model, ONNX input included, then gets its
Constant nodes turned into initializers, onnxslim, the ONNX checker and shape inference; the largest
difference from the source model on real inputs is recorded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import BuildContext, quiet_tools
from edgec.compiler.errors import ExportError, missing_dependency
from edgec.compiler.modelio import one_torch_thread, torch_run
from edgec.compiler.onnxutil import (
    constants_to_initializers,
    name_nodes,
    opset_of,
    ort_session,
    quantized_ops,
    save_model,
)
from edgec.compiler.stage import Stage
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import CalibrationSet, InputSpec, LoadedModel, OnnxModel, TensorSpec

MODEL_FILE = "model.onnx"
CHECK_SAMPLES = 4


class ExportStage(Stage):
    name = "export"
    writes = "onnx"
    tools = ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime")

    reads = ("model",)

    def __init__(self, opset: int = 18, slim: bool = True, source: str = "model"):
        self.opset = opset
        self.slim = slim
        # The value to export: "model" as loaded, or a pruned or distilled model that replaces it.
        self.reads = (source,)

    def options(self) -> dict[str, Any]:
        return {"opset": self.opset, "slim": self.slim}

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> OnnxModel:
        loaded: LoadedModel = inputs[self.reads[0]]
        try:
            import onnx
        except ImportError:
            raise missing_dependency("onnx", "onnx", "exporting to ONNX") from None
        info: dict[str, Any] = {"source_format": loaded.format}
        if loaded.kind == "onnx":
            model = onnx.load(str(loaded.onnx_path))
            info["exporter"] = "none (ONNX input)"
        else:
            model = _export_torch(loaded, self.opset, info)
        info["constants_moved"] = constants_to_initializers(model)
        # An ONNX file's declared output shapes can be wrong (a [1, seqlen] that gives [T, 1, C]): what it gives,
        # run once on inputs that fit it, is what slimming must keep and what the tasks are read from.
        given = None
        if loaded.kind == "onnx":
            probe_spec = _merge_spec(loaded.spec, onnx_spec(model))
            declared = {t.name: list(t.shape) for t in probe_spec.outputs}
            given = _output_shapes(model, probe_spec, out_dir)
        if self.slim:
            original = None
            if given is not None:  # kept to undo a slimming that changes what the model gives
                original = onnx.ModelProto()
                original.CopyFrom(model)
            model = _slim(model, info)
            if original is not None and info.get("slim") == "applied":
                changed = _changed(given, _output_shapes(model, probe_spec, out_dir))
                if changed:
                    info["slim"] = f"undone: onnxslim changed {changed}"
                    ctx.report(f"[export] onnxslim changed {changed}: keeping the model as given, unslimmed")
                    model = original
        if given is not None:
            info["outputs_as_given"] = _declare_given_shapes(model, declared, given, loaded.source, ctx)
        if loaded.kind == "onnx":
            info["quantized_ops"] = quantized_ops(model)
        # Every node named, once, here: sensitivity analysis and the fallback name nodes, and every target
        # quantizes this file, so the names must be the same everywhere.
        info["nodes_named"] = name_nodes(model)
        try:
            onnx.checker.check_model(model, full_check=False)
            if info.get("slim") == "applied":
                # onnxslim runs shape inference itself and leaves every intermediate shape in value_info.
                info["shape_inference"] = "onnxslim"
            else:
                model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
                info["shape_inference"] = "onnx"
        except Exception as exc:
            raise ExportError(
                f"the exported ONNX model of '{loaded.source}' is invalid: {' '.join(str(exc).split())[:300]}",
                hint="report this with the model; try --no-slim (slim: false in a recipe)",
            ) from None
        path = out_dir / MODEL_FILE
        save_model(model, path)
        spec = _merge_spec(loaded.spec, onnx_spec(model))
        info["opset"] = opset_of(model)
        return OnnxModel(path, spec, info)

    def save(self, value: OnnxModel, out_dir: Path) -> dict[str, Any]:
        return {"file": value.path.name, "spec": value.spec.to_dict(), "info": value.info}

    def restore(self, result: dict[str, Any], files: Path) -> OnnxModel:
        return OnnxModel(files / result["file"], InputSpec.from_dict(result["spec"]), result["info"])

    def summary(self, value: OnnxModel) -> dict[str, Any]:
        return value.info


def _export_torch(loaded: LoadedModel, opset: int, info: dict[str, Any]) -> Any:
    import onnx
    import torch

    spec = loaded.spec
    args = tuple(torch.from_numpy(v) for v in spec.example_feeds().values())
    input_names = spec.input_names
    output_names = [t.name for t in spec.outputs]
    dynamic_axes = {
        t.name: {i: d for i, d in enumerate(t.shape) if not isinstance(d, int)} for t in spec.inputs if t.is_dynamic
    }
    if dynamic_axes:
        # Dynamic output axes follow the inputs' batch axis when it is dynamic.
        batch = next((axes[0] for axes in dynamic_axes.values() if 0 in axes), None)
        if batch is not None:
            for name in output_names:
                dynamic_axes[name] = {0: batch}
    is_script = isinstance(loaded.module, (torch.jit.ScriptModule, torch.jit.ScriptFunction))
    errors = []
    if not is_script:
        try:
            with quiet_tools():
                program = torch.onnx.export(
                    loaded.exported if loaded.exported is not None and not dynamic_axes else loaded.module, args, None, input_names=input_names, output_names=output_names,
                    opset_version=max(opset, 18), dynamo=True, external_data=False,
                    dynamic_axes=dynamic_axes or None, optimize=True, verbose=False,
                )
            info["exporter"] = "dynamo"
            return program.model_proto
        except Exception as exc:
            errors.append(f"dynamo: {' '.join(str(exc).split())[:300]}")
            info["dynamo_error"] = errors[-1]
    else:
        info["dynamo_error"] = "TorchScript modules cannot be traced by torch.export"
    buf = io.BytesIO()
    try:
        with quiet_tools():
            torch.onnx.export(
                loaded.module, args, buf, input_names=input_names, output_names=output_names,
                opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes or None, do_constant_folding=True,
            )
    except Exception as exc:
        errors.append(f"torchscript: {' '.join(str(exc).split())[:300]}")
        raise ExportError(
            f"cannot export '{loaded.source}' to ONNX ({'; '.join(errors)})",
            hint="the error names the unsupported op or construct; rewrite it in the model, or export ONNX yourself",
        ) from None
    info["exporter"] = "torchscript (fallback)"
    return onnx.load_from_string(buf.getvalue())


def _slim(model: Any, info: dict[str, Any]) -> Any:
    try:
        import onnxslim
    except ImportError:
        info["slim"] = "skipped: onnxslim not installed"
        return model
    try:
        with quiet_tools():
            slimmed = onnxslim.slim(model)
    except Exception as exc:
        info["slim"] = f"skipped: onnxslim failed ({' '.join(str(exc).split())[:200]})"
        return model
    info["slim"] = "applied"
    return slimmed


def _output_shapes(model: Any, spec: InputSpec, out_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """The shape of each output of ``model`` run once by ONNX Runtime on random inputs that fit ``spec``
    (``InputSpec.example_feeds``); None when it cannot run so (then nothing is judged by it)."""
    probe = out_dir / "probe" / MODEL_FILE
    try:
        save_model(model, probe)
        session = ort_session(probe, log_level=4)  # a model random inputs cannot run is no error of the user's
        values = session.run(None, spec.example_feeds())
        return {o.name: tuple(int(d) for d in v.shape) for o, v in zip(session.get_outputs(), values)}
    except Exception:  # noqa: BLE001  (an input random values cannot feed: no shapes to go by)
        return None
    finally:
        import shutil

        shutil.rmtree(probe.parent, ignore_errors=True)


def _changed(given: dict[str, tuple[int, ...]], now: dict[str, tuple[int, ...]] | None) -> str:
    """What of ``given`` (output shapes) ``now`` does not keep, in words; "" when it keeps them all."""
    if now is None:
        return "the model so that ONNX Runtime cannot run it"
    diffs = [f"output '{n}' from {list(shape)} to {list(now[n]) if n in now else 'missing'}"
             for n, shape in given.items() if now.get(n) != shape]
    return "; ".join(diffs)


def _declare_given_shapes(model: Any, declared: dict[str, list], given: dict[str, tuple[int, ...]], source: str,
                          ctx: BuildContext) -> dict[str, Any]:
    """Where the source file declared an output's shape (``declared``) against what the model gives (another
    rank, or another fixed size), declare the shape it gives in ``model`` (in place: slimming may have done so
    already), say so, and return {output: {declared, given}}."""
    fixed = {}
    for vi in model.graph.output:
        shape, said = given.get(vi.name), declared.get(vi.name)
        if shape is None or said is None:
            continue
        if len(said) == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(said, shape)):
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for s in shape:
            dims.add().dim_value = s
        fixed[vi.name] = {"declared": said, "given": list(shape)}
        ctx.report(f"warning: '{Path(source).name}' declares output '{vi.name}' as {said} but gives "
                   f"{list(shape)}: edgec uses the shape it gives")
    return fixed


def _merge_spec(declared: InputSpec, exported: InputSpec) -> InputSpec:
    """The exported model's signature, keeping the declared layouts and dynamic axis names."""
    by_name = {t.name: t for t in declared.inputs}
    inputs = []
    for t in exported.inputs:
        d = by_name.get(t.name)
        inputs.append(TensorSpec(t.name, d.shape if d else t.shape, t.dtype, d.layout if d else t.layout))
    return InputSpec(tuple(inputs), exported.outputs)


class VerifyStage(Stage):
    """The largest difference between the source model and its ONNX export on real calibration inputs."""

    name = "verify-export"
    reads = ("model", "onnx", "calibration")
    writes = "export_check"
    tools = ("torch", "onnxruntime")

    def __init__(self, samples: int = CHECK_SAMPLES, source: str = "model"):
        self.samples = samples
        # The model that was exported (see ExportStage), compared with its own ONNX file.
        self.reads = (source, "onnx", "calibration")

    def options(self) -> dict[str, Any]:
        return {"samples": self.samples}

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> dict[str, Any]:
        loaded: LoadedModel = inputs[self.reads[0]]
        onnx_model: OnnxModel = inputs["onnx"]
        calibration: CalibrationSet | None = inputs["calibration"]
        feeds = []
        if calibration is not None:
            for i, sample in enumerate(calibration):
                if i >= self.samples:
                    break
                feeds.append(sample)
        against = "calibration samples"
        if not feeds:
            feeds = [onnx_model.spec.example_feeds(seed=i) for i in range(2)]
            against = "random inputs (no calibration data given)"
        try:
            session = ort_session(onnx_model.path)
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime cannot load the exported model of '{loaded.source}': "
                f"{' '.join(str(exc).split())[:300]}",
                hint="an op may be unsupported by ONNX Runtime; try another --opset",
            ) from None
        names = onnx_model.spec.input_names
        if loaded.kind == "onnx":
            # The input file as given, against what export made of it (constants moved, slimmed, opset raised).
            original = ort_session(loaded.onnx_path)

            def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
                return original.run(None, {n: f[n] for n in names})
        else:
            def reference(f: dict[str, np.ndarray]) -> list[np.ndarray]:
                with one_torch_thread():
                    return torch_run(loaded.module, f, names)
        worst = 0.0
        for f in feeds:
            ref = reference(f)
            got = session.run(None, {n: f[n] for n in names})
            for i, (r, g) in enumerate(zip(ref, got)):
                if r.shape != g.shape:
                    raise ExportError(
                        f"the exported model of '{loaded.source}' gives output {i} "
                        f"('{onnx_model.spec.outputs[i].name}') the shape {list(g.shape)} where the source gives "
                        f"{list(r.shape)}",
                        hint="report this with the model; try --no-slim (slim: false in a recipe)",
                    )
                if r.size and np.issubdtype(r.dtype, np.floating):
                    worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
        reference_name = "the input ONNX file" if loaded.kind == "onnx" else "the torch model"
        return {"max_abs_diff": worst, "samples": len(feeds), "against": against, "reference": reference_name}

    def save(self, value: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        return value

    def restore(self, result: dict[str, Any], files: Path) -> dict[str, Any]:
        return result

    def summary(self, value: dict[str, Any]) -> dict[str, Any]:
        return value
