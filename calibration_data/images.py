"""Image folders as calibration data: the preprocessing spec and the reader.

Pillow is imported only when images are read, so the rest of edgec never needs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError, TargetUnavailableError
from edgec.compiler.types import TensorSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input: ``((pixel * scale) - mean) / std`` per channel.

    Attributes:
        resize: (height, width) to resize to; None takes the input's spatial size.
        mean: per-channel mean subtracted after scaling (one value, or one per channel).
        std: per-channel divisor applied after the mean (one value, or one per channel).
        scale: factor applied to the 0-255 pixel values first.
        layout: "NCHW" or "NHWC"; None takes the input's layout, or NCHW when it has none.
        channel_order: "RGB" or "BGR". A 1-channel input reads images as grayscale whatever this says.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1 / 255
    layout: str | None = None
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, here
        if self.resize is not None:
            set_(self, "resize", _parse_resize(self.resize))
        set_(self, "mean", _parse_floats("mean", self.mean))
        set_(self, "std", _parse_floats("std", self.std))
        if any(s == 0 for s in self.std):
            raise ConfigError("preprocess.std must not contain 0", hint="std divides the pixel values")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or self.scale <= 0:
            raise ConfigError(
                f"preprocess.scale must be a positive number, got {self.scale!r}", hint="e.g. scale: 0.00392"
            )
        set_(self, "scale", float(self.scale))
        if self.layout is not None:
            set_(self, "layout", _parse_choice("layout", self.layout, ("NCHW", "NHWC")))
        set_(self, "channel_order", _parse_choice("channel_order", self.channel_order, ("RGB", "BGR")))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Build from a recipe section; keys are the field names, unknown keys are a ConfigError."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in fields:
                raise ConfigError(f"unknown preprocess key '{key}'", hint=f"valid keys: {', '.join(fields)}")
        return cls(**{k: v for k, v in d.items() if v is not None})

    @classmethod
    def coerce(cls, value: Preprocess | Mapping[str, Any] | None) -> Preprocess:
        if value is None:
            return cls()
        if isinstance(value, Preprocess):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ConfigError(f"preprocess must be a mapping of options, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resize"] = list(self.resize) if self.resize else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A Preprocess resolved against one input: every size, channel count and constant fixed."""

    size: tuple[int, int]  # (height, width)
    channels: int  # 1 (grayscale) or 3
    layout: str
    bgr: bool
    scale: float
    mean: np.ndarray
    std: np.ndarray


def _resolve(pre: Preprocess, tensor: TensorSpec, source: str) -> _Plan:
    if len(tensor.shape) != 4:
        raise CalibrationError(
            f"{source}: an image folder feeds 4-D image inputs, "
            f"but input '{tensor.name}' is {tensor.shape_str()}",
            hint="pass a .npz with an array per input instead",
        )
    layout = pre.layout or tensor.layout or "NCHW"
    if layout == "NCHW":
        c, h, w = tensor.shape[1], tensor.shape[2], tensor.shape[3]
    else:
        h, w, c = tensor.shape[1], tensor.shape[2], tensor.shape[3]
    channels = c if isinstance(c, int) else 3
    if channels not in (1, 3):
        raise CalibrationError(
            f"{source}: input '{tensor.name}' ({tensor.shape_str()}, {layout}) has {channels} channels; "
            "image folders feed 1-channel (grayscale) or 3-channel inputs",
            hint="check preprocess.layout, or pass a .npz prepared for this input",
        )
    if pre.resize is not None:
        size = pre.resize
    elif isinstance(h, int) and isinstance(w, int):
        size = (h, w)
    else:
        raise ConfigError(
            f"input '{tensor.name}' has dynamic spatial size ({tensor.shape_str()}), so images need a size",
            hint="set preprocess resize, e.g. resize: [224, 224]",
        )
    return _Plan(
        size=size,
        channels=channels,
        layout=layout,
        bgr=pre.channel_order == "BGR",
        scale=pre.scale,
        mean=_per_channel("mean", pre.mean, channels, tensor.name),
        std=_per_channel("std", pre.std, channels, tensor.name),
    )


class ImageFolder:
    """The image files of one folder (not its sub-folders), sorted by name, read on demand through a plan."""

    def __init__(self, folder: Path, tensor: TensorSpec, preprocess: Preprocess, source: str):
        self.folder = folder
        self.tensor = tensor
        self.source = source
        self.files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        self._plan = _resolve(preprocess, tensor, source)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as a float32 array with a batch axis of 1, in the plan's layout."""
        return read_image(self.files[index], self._plan)


def read_image(path: Path, plan: _Plan) -> np.ndarray:
    Image = _pillow()
    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of an animated GIF/WebP
            img = img.convert("L" if plan.channels == 1 else "RGB")
            img = img.resize((plan.size[1], plan.size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports truncated/corrupt files as these
        raise InputFileError(
            f"cannot read image '{path}': {exc}",
            hint="remove or replace the file; the folder must hold only readable images",
        ) from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if plan.bgr:
        pixels = pixels[:, :, ::-1]
    x = (pixels * plan.scale - plan.mean) / plan.std
    if plan.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise TargetUnavailableError(
            "reading an image folder needs the Python package 'pillow', which is not installed",
            hint="pip install pillow",
        ) from None
    return Image


def _per_channel(key: str, values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    if len(values) == channels:
        return np.asarray(values, dtype=np.float32)
    if len(values) == 1 or len(set(values)) == 1:  # the 3-value default also fits a grayscale input
        return np.full(channels, values[0], dtype=np.float32)
    raise ConfigError(
        f"preprocess.{key} has {len(values)} values but input '{name}' has {channels} channel(s)",
        hint=f"give one value or {channels}",
    )


def _parse_resize(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ConfigError(f"preprocess.resize must be [height, width] (positive integers), got {value!r}",
                          hint="e.g. resize: [224, 224]")
    return (value[0], value[1])


def _parse_floats(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"preprocess.{key} must be a number or a list of numbers, got {value!r}",
                          hint=f"e.g. {key}: 0.5 or {key}: [0.5, 0.5, 0.5]")
    return tuple(float(v) for v in value)


def _parse_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in choices:
        raise ConfigError(f"preprocess.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value.upper()
