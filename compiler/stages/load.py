"""LoadStage: a checkpoint on disk to a model in memory plus its InputSpec.

Formats: ExportedProgram (.pt2), TorchScript, a state_dict or training checkpoint with a model factory,
safetensors with a model factory, and ONNX. Pickles are loaded with ``weights_only=True``; a checkpoint that
needs full unpickling is refused unless the user passed ``--trust-checkpoint``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgec.compiler.context import BuildContext, quiet_tools
from edgec.compiler.errors import CheckpointError, ConfigError, InputFileError, missing_dependency
from edgec.compiler.modelio import flatten_outputs, import_callable, one_torch_thread, output_names_for, torch_run
from edgec.compiler.stage import Stage
from edgec.compiler.types import InputSpec, LoadedModel, TensorSpec, guess_layout, sha256_file

ONNX_SUFFIXES = {".onnx"}
SAFETENSORS_SUFFIXES = {".safetensors"}
EXPORTED_PROGRAM_SUFFIXES = {".pt2"}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in EXPORTED_PROGRAM_SUFFIXES:
        return "exported-program"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch-save"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("serialized_exported_program.json") or n.endswith("models/model.json") for n in names):
            return "exported-program"
    return "torch-save"


def checkpoint_key(path: Path) -> str:
    return sha256_file(path)


class LoadStage(Stage):
    name = "load"
    reads = ("checkpoint",)
    writes = "model"
    cacheable = False
    tools = ("torch", "onnx")

    def __init__(
        self,
        checkpoint: Path,
        inputs: tuple[TensorSpec, ...] = (),
        model_factory: str | None = None,
        trust_checkpoint: bool = False,
    ):
        self.checkpoint = Path(checkpoint)
        self.inputs = tuple(inputs)
        self.model_factory = model_factory
        self.trust_checkpoint = trust_checkpoint

    def options(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "model_factory": self.model_factory,
            "trust_checkpoint": self.trust_checkpoint,
        }

    def requires(self, inputs: dict[str, Any], ctx: BuildContext) -> None:
        if not self.checkpoint.is_file():
            raise InputFileError(f"checkpoint '{self.checkpoint}' does not exist", hint="check the path")

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> LoadedModel:
        return load_checkpoint(self.checkpoint, self.inputs, self.model_factory, self.trust_checkpoint)


def load_checkpoint(
    path: Path,
    inputs: tuple[TensorSpec, ...] = (),
    model_factory: str | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint '{path}' does not exist", hint="check the path")
    fmt = detect_format(path)
    if fmt == "onnx":
        return _load_onnx(path, inputs)
    try:
        import torch
    except ImportError:
        raise missing_dependency("torch", "torch", f"loading the PyTorch checkpoint '{path}'") from None

    torch.manual_seed(0)
    example: tuple | None = None
    exported = None
    if fmt == "exported-program":
        try:
            with quiet_tools():  # torch logs its own traceback of a corrupt archive before raising
                ep = torch.export.load(str(path))
        except Exception as exc:
            raise _corrupt(path, exc) from None
        module = ep.module()
        exported = ep
        example = _exported_program_example(ep)
        names = _exported_program_input_names(ep)
    elif fmt == "torchscript":
        try:
            with quiet_tools():
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise _corrupt(path, exc) from None
        names = None
    elif fmt == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise missing_dependency("safetensors", "torch", f"loading '{path}'") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise _corrupt(path, exc) from None
        module, example = _from_factory(path, state, model_factory)
        names = None
    else:
        obj = _torch_load(path, trust_checkpoint)
        if isinstance(obj, torch.nn.Module):
            module, fmt = obj, "pickled-module"
        else:
            state = _state_dict_of(path, obj)
            module, example = _from_factory(path, state, model_factory)
            fmt = "state-dict"
        names = None

    if exported is None and hasattr(module, "eval"):
        module.eval()
    if example is None:
        example = getattr(module, "example_inputs", None)
        if example is not None and not isinstance(example, (tuple, list)):
            example = (example,)
    specs = _input_specs(path, inputs, example, names)
    spec = _probe(path, module, specs)
    return LoadedModel("torch", spec, path, fmt, module=module, exported=exported)


def _reason(exc: BaseException) -> str:
    """One line saying why torch refused: TorchScript puts its own traceback first and the reason last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if "Traceback of TorchScript" in lines[0] else lines[0]
    return line[:300]


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"cannot read checkpoint '{path}': {first[:300]}",
        hint="the file may be truncated or corrupt; save or export it again",
    )


def _torch_load(path: Path, trust: bool) -> Any:
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise _corrupt(path, exc) from None
        if not trust:
            raise CheckpointError(
                f"checkpoint '{path}' contains pickled Python objects that a weights-only load refuses",
                hint="if you trust its source, pass --trust-checkpoint (this runs code from the file); "
                "better, save a state_dict or an ExportedProgram (.pt2)",
            ) from None
    except Exception as exc:
        raise _corrupt(path, exc) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _corrupt(path, exc) from None


def _state_dict_of(path: Path, obj: Any) -> Mapping[str, Any]:
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"checkpoint '{path}' holds a {type(obj).__name__} that is neither a module nor a state_dict",
        hint="save model.state_dict() (or a dict with a 'state_dict' entry), or an ExportedProgram",
    )


def _from_factory(path: Path, state: Mapping[str, Any], factory: str | None) -> tuple[Any, tuple | None]:
    if not factory:
        raise ConfigError(
            f"checkpoint '{path}' holds only weights; edgec needs the model's code to rebuild it",
            hint="pass --model-factory module:function (a function returning the nn.Module)",
        )
    fn = import_callable(factory, "--model-factory")
    built = fn()
    example = None
    if isinstance(built, tuple) and len(built) == 2:
        built, example = built
        if example is not None and not isinstance(example, (tuple, list)):
            example = (example,)
    import torch

    if not isinstance(built, torch.nn.Module):
        raise ConfigError(f"--model-factory {factory} returned {type(built).__name__}, not a torch.nn.Module")
    # Lightning-style prefixes ("model.") are common in training checkpoints.
    target_keys = set(built.state_dict())
    if not (set(state) & target_keys):
        for prefix in ("model.", "module.", "net."):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) & target_keys:
                state = stripped
                break
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise CheckpointError(
            f"the weights in '{path}' do not fit the model from --model-factory {factory}: {msg[:400]}",
            hint="check that the factory builds the same architecture the checkpoint was trained with",
        ) from None
    return built, example


def _exported_program_example(ep: Any) -> tuple | None:
    ex = getattr(ep, "example_inputs", None)
    if ex:
        args, _kwargs = ex
        return tuple(args)
    return None


def _exported_program_input_names(ep: Any) -> list[str] | None:
    try:
        from torch.export.graph_signature import InputKind

        return [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    except Exception:
        return None


def _input_specs(
    path: Path, declared: tuple[TensorSpec, ...], example: tuple | None, names: list[str] | None
) -> tuple[TensorSpec, ...]:
    if declared:
        return declared
    if example:
        import torch

        specs = []
        for i, t in enumerate(example):
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"example input {i} of '{path}' is a {type(t).__name__}, not a tensor")
            name = names[i] if names and i < len(names) else ("input" if len(example) == 1 else f"input_{i}")
            dtype = str(t.dtype).replace("torch.", "")
            shape = tuple(int(d) for d in t.shape)
            specs.append(TensorSpec(name, shape, dtype, guess_layout(shape, dtype)))
        return tuple(specs)
    raise ConfigError(
        f"edgec cannot tell the input shapes of '{path}'",
        hint="pass --input NAME:SHAPE[:DTYPE] for each input, e.g. --input x:1x3x224x224",
    )


def _probe(path: Path, module: Any, inputs: tuple[TensorSpec, ...]) -> InputSpec:
    """Run the model once on inputs of the declared shape: fails early on a shape the model rejects."""
    feeds = InputSpec(inputs).example_feeds()
    try:
        with one_torch_thread():
            outs = torch_run(module, feeds, [t.name for t in inputs])
    except Exception as exc:
        shapes = ", ".join(f"{t.name}:{t.shape_str()}:{t.dtype}" for t in inputs)
        first = _reason(exc)
        raise CheckpointError(
            f"the model in '{path}' rejected inputs {shapes}: {first}",
            hint="check --input NAME:SHAPE[:DTYPE] against what the model's forward() expects",
        ) from None
    names = output_names_for(len(outs))
    outputs = tuple(TensorSpec(n, tuple(o.shape), str(o.dtype)) for n, o in zip(names, outs))
    return InputSpec(inputs, outputs)


def onnx_spec(model: Any) -> InputSpec:
    """The InputSpec of an onnx.ModelProto: graph inputs that are not initializers, and outputs."""
    from onnx import helper

    init = {i.name for i in model.graph.initializer}

    def convert(vi: Any) -> TensorSpec:
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
        dims: list[int | str] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"dim{i}")
        shape = tuple(dims)
        return TensorSpec(vi.name, shape, dtype, guess_layout(shape, dtype))

    inputs = tuple(convert(vi) for vi in model.graph.input if vi.name not in init)
    outputs = tuple(convert(vi) for vi in model.graph.output)
    return InputSpec(inputs, outputs)


def _load_onnx(path: Path, declared: tuple[TensorSpec, ...]) -> LoadedModel:
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "onnx", f"loading '{path}'") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise _corrupt(path, exc) from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"ONNX file '{path}' fails the ONNX checker: {first}",
            hint="re-export the model; edgec only builds from valid ONNX",
        ) from None
    spec = onnx_spec(model)
    if declared:
        by_name = {t.name: t for t in spec.inputs}
        for t in declared:
            if t.name not in by_name:
                raise ConfigError(
                    f"--input '{t.name}' is not an input of '{path}'",
                    hint=f"its inputs are: {', '.join(by_name)}",
                )
            if not by_name[t.name].accepts(t.concrete_shape()) or len(t.shape) != len(by_name[t.name].shape):
                raise CheckpointError(
                    f"the model in '{path}' rejects input {t.name} of shape {t.shape_str()}: "
                    f"it expects {by_name[t.name].shape_str()}",
                    hint="fix --input to match the ONNX model's input shape",
                )
        spec = InputSpec(tuple(next((d for d in declared if d.name == t.name), t) for t in spec.inputs), spec.outputs)
    return LoadedModel("onnx", spec, path, "onnx", onnx_path=path)


__all__ = ["LoadStage", "LoadedModel", "load_checkpoint", "onnx_spec", "detect_format", "flatten_outputs"]
