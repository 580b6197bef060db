"""The recipe: everything ``edgec build`` does, as one YAML file whose keys equal the option names.

Flags override the file; an unknown key is an error naming the key. The resolved recipe is written next to
the outputs (``recipe.yaml``) so a build can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError, InputFileError


def _field(default: Any, help: str, *, flag: str | None = "", short: str | None = None, metavar: str | None = None,
           choices: str | tuple[str, ...] | None = None, path: bool = False, negative: str | None = None,
           secondary: str | None = None) -> Any:
    """One build option, declared once: the recipe key (the field), its type and default (the annotation and
    ``default``), its help, and how the command line spells it.

    Args:
        flag: the CLI flag; "" derives ``--kebab-case`` from the key, None keeps the option recipe-only.
        short: a one-letter alias (``-t``).
        choices: the valid values, or ``"module:NAME"`` naming the tuple in the module that owns them (read
            when the command is built and when a recipe is checked; never copied here).
        path: a path (relative to the recipe's folder in a recipe file, absolute in the written recipe).
        negative: for a boolean that defaults to true, the flag that turns it off (``--no-cache``).
        secondary: for a boolean, the flag that sets it false beside ``flag`` (``--prune-per-layer``).
    """
    meta = {"help": help, "flag": flag, "short": short, "metavar": metavar, "choices": choices, "path": path,
            "negative": negative, "secondary": secondary}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    """A field's valid values, read from the module that owns them."""
    choices = field.metadata.get("choices")
    if isinstance(choices, str):
        import importlib

        module, _, name = choices.partition(":")
        return tuple(getattr(importlib.import_module(module), name))
    return choices


@dataclasses.dataclass
class Recipe:
    checkpoint: str | None = _field(None, "the model: .pt2, TorchScript, state_dict/.safetensors (with model_factory), "
                                    ".onnx", flag=None, path=True)
    target: list[str] = _field(["cpu"], "Target: a device profile or backend (repeatable; see `edgec targets`). "
                               "Default: cpu.", short="-t")
    precision: list[str] = _field([], "fp32, fp16 or int8 (repeatable). Default: fp32, or int8 on INT8-only targets "
                                  "(mcu).", short="-p")
    calib: str | None = _field(None, "Calibration data: .npz/.npy (first axis = samples), an image folder, or "
                               "module:function.", path=True)
    calib_samples: int | None = _field(None, "Use N calibration samples, drawn at random with --seed.", metavar="N")
    calibration_method: str = _field("minmax", "Activation range estimator.",
                                     choices="edgec.compiler.stages.calibrate:METHODS")
    preprocess: dict[str, Any] = _field({}, "image-folder preprocessing: resize, mean, std, scale, layout, "
                                        "channel_order", flag=None)
    inputs: list[str] = _field([], "An input of the model, e.g. x:1x3x224x224:float32 (repeatable). A named "
                               "dimension (Nx3x224x224) is dynamic.", flag="--input", metavar="NAME:SHAPE[:DTYPE]")
    model_factory: str | None = _field(None, "Builds the nn.Module for a state_dict or safetensors checkpoint.",
                                       metavar="MODULE:FUNCTION")
    trust_checkpoint: bool = _field(False, "Allow full unpickling of the checkpoint. Runs code from the file: only for "
                                    "files you trust.")
    out: str | None = _field(None, "The build folder to write (replaced atomically).", short="-o", path=True)
    opset: int = _field(18, "ONNX opset for export (the dynamo exporter needs >= 18).")
    slim: bool = _field(True, "Simplify the exported ONNX with onnxslim (--no-slim keeps it as exported).",
                        flag=None, negative="--no-slim")
    seed: int = _field(0, "Seed for sampling and anything random.")
    cache: bool = _field(True, "Reuse stage outputs from the build cache (--no-cache rebuilds every stage).", flag=None, negative="--no-cache")
    target_options: dict[str, dict[str, Any]] = _field({}, "per-backend options, e.g. {onnxruntime: {per_channel: "
                                                      "true}}", flag=None)
    # Output tasks, build-time verification and the accuracy budget.
    outputs: dict[str, Any] = _field({}, "The task of an output, NAME=TASK[:key=value,...] (repeatable), e.g. "
                                     "output0=detection:layout=cxcywh; in a recipe a mapping NAME: TASK[:...]. "
                                     "Undeclared outputs are inferred.", flag="--output-task",
                                     metavar="NAME=TASK[:OPTIONS]")
    verify: bool = _field(True, "Verify every compressed artifact against FP32 on held-out data at build time "
                          "(--no-verify skips it: for users who know).",
                          flag=None, negative="--no-verify")
    verify_data: str | None = _field(None, "Held-out data for verification (the formats of --calib). Default: a "
                                     "seeded part of --calib, kept out of calibration.", metavar="PATH", path=True)
    verify_labels: str | None = _field(None, "Labels of --verify-data (or, without it, of --calib): accuracy "
                                       "against ground truth and --calibrate-confidence.", metavar="PATH", path=True)
    max_accuracy_drop: float | None = _field(None, "Accuracy budget: points an artifact may lose on its task's "
                                             "headline metric (default per task).", metavar="PTS")
    min_cosine: float | None = _field(None, "Accuracy budget: lowest cosine to FP32 of any output (default per "
                                      "task).", metavar="C")
    fallback: bool = _field(True, "When an INT8 artifact breaks the budget, keep its worst layers in higher precision "
                            "until it holds (--no-fallback fails the build instead).", flag=None,
                            negative="--no-fallback")
    calibrate_confidence: bool = _field(False, "Fit a temperature per classification output on held-out labelled "
                                        "data so compressed models are no more over-confident than FP32.")
    # Structured pruning (torch-pruning DepGraph) and distillation, between loading and export.
    prune: float | None = _field(None, "Remove this fraction (0-1) of the channels of every prunable layer "
                                 "(torch-pruning).", metavar="RATIO")
    prune_macs: float | None = _field(None, "Remove this fraction (0-1) of the MACs instead, pruning step by step "
                                      "until met.", metavar="FRACTION")
    prune_criterion: str | None = _field(None, "Channel importance (default: taylor with --train-data, else l1).",
                                         choices="edgec.compiler.stages.prune:CRITERIA")
    prune_global: bool = _field(False, "Rank channels across all layers, or remove the same fraction per layer "
                                "(default).", secondary="--prune-per-layer")
    prune_round_to: int | None = _field(None, "Keep pruned channel counts multiples of N (8 suits x86 CPU kernels; odd "
                                        "counts can make fewer MACs slower).", metavar="N")
    protect: list[str] = _field([], "Keep the output channels of modules matching this fnmatch pattern, e.g. "
                                "'stem.*' (repeatable). Output layers are always kept.", metavar="PATTERN")
    distill: bool = _field(False, "Fine-tune the pruned model (or --student) against the original model as teacher.")
    train_data: str | None = _field(None, "Training data for --distill and Taylor pruning (the formats of --calib).",
                                    metavar="PATH", path=True)
    train_labels: str | None = _field(None, "Class labels of --train-data (.npy/.npz/.txt/.csv): adds a hard-label "
                                      "loss.", metavar="PATH", path=True)
    epochs: int = _field(10, "Distillation epochs, at most (stops early when the held-out agreement stalls).")
    lr: float = _field(1e-3, "Distillation learning rate (cosine schedule).")
    batch_size: int = _field(64, "distillation batch size", flag=None)
    distill_temperature: float = _field(4.0, "Softmax temperature of the distillation loss.")
    hard_label_weight: float | None = _field(None, "Weight (0-1) of the hard-label loss (default 0.5 with "
                                             "--train-labels, else 0).", metavar="W")
    feature_layers: list[str] = _field([], "Also match this module's output between teacher and student "
                                       "(repeatable).", flag="--feature-layer", metavar="MODULE")
    patience: int = _field(3, "stop distilling after this many epochs without better held-out agreement", flag=None)
    student: str | None = _field(None, "Distill into this smaller architecture instead of a pruned model.",
                                 metavar="MODULE:FUNCTION")
    tensorboard: str | None = _field(None, "Write TensorBoard logs of the distillation curves here (needs "
                                     "tensorboard installed).", metavar="DIR", path=True)

    # edgec sweep's search space and settings (edgec.sweep.SweepOptions' fields); edgec build ignores it.
    sweep: dict[str, Any] = _field({}, "edgec sweep: the search space (prune, precision, calibration_method, target) "
                                   "and its settings; ignored by edgec build", flag=None)

    def __post_init__(self) -> None:
        _check(self)

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
    for f in dataclasses.fields(Recipe):
        if f.type.startswith("list") and isinstance(data.get(f.name), str):
            data[f.name] = [data[f.name]]
    base = path.parent
    for key in path_keys():
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
    return Recipe(**merged)


def _check(recipe: Recipe) -> None:
    """Every value against its field's type and choices (the recipe file's, the flags', or an API caller's)."""
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        expected = f.type
        if isinstance(value, tuple):
            value = list(value)
        if expected.startswith("dict") and isinstance(value, list) and all(isinstance(v, str) for v in value):
            # NAME=VALUE pairs from a repeatable flag (--output-task NAME=TASK...) or a recipe list.
            pairs = [v.partition("=") for v in value]
            bad = next((v for v, (k, eq, _) in zip(value, pairs) if not k or not eq), None)
            if bad is not None:
                raise ConfigError(f"{_option_name(f)} '{bad}' is not NAME=VALUE", hint=f"e.g. {f.metadata['metavar']}")
            value = {k: rest for k, _, rest in pairs}
        if expected.startswith("list") and not isinstance(value, list):
            raise ConfigError(f"recipe key '{f.name}' must be a list")
        if expected.startswith("dict") and not isinstance(value, dict):
            raise ConfigError(f"recipe key '{f.name}' must be a mapping")
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"recipe key '{f.name}' must be true or false, not {value!r}")
        if expected in ("int", "int | None") and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"recipe key '{f.name}' must be an integer, not {value!r}")
        if expected in ("float", "float | None") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"recipe key '{f.name}' must be a number, not {value!r}")
            value = float(value)
        choices = choices_of(f)
        values = value if isinstance(value, list) else [value]
        if choices and value is not None and any(v not in choices for v in values):
            bad = next(v for v in values if v not in choices)
            raise ConfigError(f"{_option_name(f)} '{bad}' is not valid", hint=f"use one of: {', '.join(choices)}")
        object.__setattr__(recipe, f.name, value)


def path_keys() -> list[str]:
    """Recipe keys that hold paths: relative to the recipe file, resolved in the written recipe."""
    return [f.name for f in dataclasses.fields(Recipe) if f.metadata.get("path")]


def _option_name(field: dataclasses.Field) -> str:
    flag = field.metadata.get("flag")
    return f"--{field.name.replace('_', '-')}" if flag == "" else (flag or f"recipe key '{field.name}'")
