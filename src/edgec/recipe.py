"""The recipe: everything ``edgec build`` does, as one YAML file whose keys equal the option names.

Flags override the file; an unknown key is an error naming the key. The resolved recipe is written next to
the outputs (``recipe.yaml``) so a build can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError, InputFileError

# Recipe keys that hold paths: relative to the recipe file, resolved in the written recipe.
PATH_KEYS = ("checkpoint", "calib", "out", "train_data", "train_labels", "tensorboard")


def _field(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class Recipe:
    checkpoint: str | None = _field(None, "the model: .pt2, TorchScript, state_dict/.safetensors (with model_factory), .onnx")
    target: list[str] = _field(["cpu"], "targets (device profiles or backends): see `edgec targets`")
    precision: list[str] = _field([], "precisions to build: fp32, fp16, int8 (default: fp32, or int8 on INT8-only targets)")
    calib: str | None = _field(None, "calibration data: .npz/.npy, an image folder, or module:function")
    calib_samples: int | None = _field(None, "use this many calibration samples, drawn at random with `seed`")
    calibration_method: str = _field("minmax", "activation range estimator: minmax, entropy, percentile")
    preprocess: dict[str, Any] = _field({}, "image-folder preprocessing: resize, mean, std, scale, layout, channel_order")
    inputs: list[str] = _field([], "input specs NAME:SHAPE[:DTYPE] (needed when the checkpoint does not record them)")
    model_factory: str | None = _field(None, "module:function (or file.py:function) returning the nn.Module")
    trust_checkpoint: bool = _field(False, "allow full unpickling of a checkpoint (runs code from the file)")
    out: str | None = _field(None, "the build folder to write")
    opset: int = _field(18, "ONNX opset for export (the dynamo exporter needs >= 18)")
    slim: bool = _field(True, "simplify the exported ONNX with onnxslim")
    seed: int = _field(0, "seed for sampling and anything random")
    cache: bool = _field(True, "reuse stage outputs from the build cache")
    target_options: dict[str, dict[str, Any]] = _field({}, "per-backend options, e.g. {onnxruntime: {per_channel: true}}")
    # Structured pruning (torch-pruning DepGraph) and distillation, between loading and export.
    prune: float | None = _field(None, "remove this fraction of the channels of every prunable layer (0 < x < 1)")
    prune_macs: float | None = _field(None, "remove this fraction of the MACs instead, pruning step by step until met (0 < x < 1)")
    prune_criterion: str | None = _field(None, "channel importance: l1, l2 or taylor (default: taylor when train_data is given, else l1)")
    prune_global: bool = _field(False, "rank channels across all layers (global) instead of the same fraction per layer")
    prune_round_to: int | None = _field(None, "keep channel counts multiples of this (e.g. 8, which CPU kernels prefer)")
    protect: list[str] = _field([], "module-name patterns (fnmatch) whose output channels are kept; the output layers always are")
    distill: bool = _field(False, "fine-tune the pruned model (or `student`) against the original model as teacher")
    train_data: str | None = _field(None, "training data for distillation and Taylor pruning: .npz/.npy, an image folder, or module:function")
    train_labels: str | None = _field(None, "class labels of train_data (.npy/.npz/.txt/.csv): adds the hard-label loss")
    epochs: int = _field(10, "distillation epochs (at most: early stopping on the held-out agreement)")
    lr: float = _field(1e-3, "distillation learning rate (Adam, cosine schedule)")
    batch_size: int = _field(64, "distillation batch size")
    distill_temperature: float = _field(4.0, "softmax temperature of the distillation loss")
    hard_label_weight: float | None = _field(None, "weight of the hard-label loss, 0..1 (default 0.5 with train_labels, else 0)")
    feature_layers: list[str] = _field([], "modules of both teacher and student whose outputs also get an MSE loss")
    patience: int = _field(3, "stop distilling after this many epochs without better held-out agreement")
    student: str | None = _field(None, "module:function building a smaller student architecture (instead of pruning)")
    tensorboard: str | None = _field(None, "write TensorBoard logs of the distillation curves to this folder (needs tensorboard)")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a recipe file, with unknown keys refused. Relative paths in it are left as written."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"recipe '{path}' does not exist", hint="check the --config path")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe '{path}' is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of option: value")
    known = set(Recipe.keys())
    for key in data:
        if key not in known:
            close = [k for k in known if k.replace("_", "") == str(key).replace("_", "").replace("-", "")]
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown key '{key}' in recipe '{path}'", hint=hint)
    for key in ("target", "precision", "inputs", "protect", "feature_layers"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    base = path.parent
    for key in PATH_KEYS:
        # Paths in a recipe are relative to the recipe's folder, like a Makefile's.
        value = data.get(key)
        if isinstance(value, str) and ":" not in value and not Path(value).is_absolute():
            data[key] = str(base / value)
    return data


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> Recipe:
    """Defaults, then the recipe file, then flags given on the command line (None and () mean not given)."""
    merged = dict(file_values)
    for key, value in flag_values.items():
        if value is None or value == () or value == []:
            continue
        merged[key] = list(value) if isinstance(value, tuple) else value
    types = {f.name: f.type for f in dataclasses.fields(Recipe)}
    for key, value in merged.items():
        expected = types[key]
        if expected.startswith("list") and not isinstance(value, list):
            raise ConfigError(f"recipe key '{key}' must be a list")
        if expected.startswith("dict") and not isinstance(value, dict):
            raise ConfigError(f"recipe key '{key}' must be a mapping")
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"recipe key '{key}' must be true or false, not {value!r}")
        if expected in ("int", "int | None") and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"recipe key '{key}' must be an integer, not {value!r}")
        if expected in ("float", "float | None") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"recipe key '{key}' must be a number, not {value!r}")
            merged[key] = float(value)
    return Recipe(**merged)
