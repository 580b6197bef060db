"""The recipe: everything ``edgec build`` does, as one YAML file whose keys equal the option names.

Flags override the file; an unknown key is an error naming the key. The resolved recipe is written next to
the outputs (``recipe.yaml``) so a build can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError, InputFileError


def _field(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class Recipe:
    checkpoint: str | None = _field(None, "the model: .pt2, TorchScript, state_dict/.safetensors (with model_factory), .onnx")
    target: list[str] = _field(["cpu"], "targets (device profiles or backends): see `edgec targets`")
    precision: list[str] = _field(["fp32"], "precisions to build: fp32, fp16, int8")
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
    for key in ("target", "precision", "inputs"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    base = path.parent
    for key in ("checkpoint", "calib", "out"):
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
    return Recipe(**merged)
