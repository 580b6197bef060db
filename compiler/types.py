"""Core types every layer shares: tensor and input specs, precisions, formats, artifacts, calibration sets."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgec.compiler.errors import ConfigError

if TYPE_CHECKING:  # numpy is imported where it is used: `edgec --help` must not load it
    import numpy as np


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str) -> Precision:
        try:
            return cls(value.lower())
        except ValueError:
            valid = ", ".join(p.value for p in cls)
            raise ConfigError(f"unknown precision '{value}'", hint=f"use one of: {valid}") from None


class ModelFormat(str, enum.Enum):
    TORCH = "torch"
    ONNX = "onnx"
    TFLITE = "tflite"
    ENGINE = "engine"
    C_SOURCE = "c-source"
    PTE = "pte"  # an ExecuTorch program


# The dtypes edgec accepts for model inputs, by the names users write.
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32",
    "int8": "int8", "uint8": "uint8", "bool": "bool",
}


def parse_dtype(name: str) -> str:
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype '{name}'", hint=f"use one of: {', '.join(sorted(set(_DTYPES)))}"
        ) from None


Dim = int | str  # an int is a fixed size; a str names a dynamic axis ("batch", "N", ...)
#: The size example inputs give a dynamic axis other than the first (see ``InputSpec.example_feeds``).
DYNAMIC_EXTENT = 64


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (ints, or strings for dynamic axes), numpy dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    layout: str | None = None  # "NCHW" / "NHWC" for image tensors, None when not an image

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else fill for d in self.shape)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(d, int) or d == s for d, s in zip(self.shape, shape))

    def shape_str(self) -> str:
        return "x".join(str(d) for d in self.shape) if self.shape else "scalar"

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            d["layout"] = self.layout
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"), d.get("layout"))

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse ``NAME:SHAPE[:DTYPE]`` as written on the command line, e.g. ``x:1x3x224x224:float32``.

        A non-numeric dimension (``Nx3x224x224``) is a dynamic axis.
        """
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ConfigError(
                f"cannot parse --input '{text}'", hint="write NAME:SHAPE[:DTYPE], e.g. x:1x3x224x224:float32"
            )
        dims: list[Dim] = []
        for tok in re.split(r"[x,]", parts[1]):
            tok = tok.strip()
            if not tok:
                raise ConfigError(f"empty dimension in --input '{text}'", hint="e.g. x:1x3x224x224")
            if tok.isdigit():
                if int(tok) <= 0:
                    raise ConfigError(f"dimension {tok} in --input '{text}' must be positive")
                dims.append(int(tok))
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
                dims.append(tok)
            else:
                raise ConfigError(f"bad dimension '{tok}' in --input '{text}'", hint="use integers or a name")
        dtype = parse_dtype(parts[2]) if len(parts) == 3 else "float32"
        return cls(parts[0], tuple(dims), dtype, guess_layout(tuple(dims), dtype))


def guess_layout(shape: tuple[Dim, ...], dtype: str) -> str | None:
    """NCHW or NHWC for a 4-D float tensor whose channel axis is plainly 1, 3 or 4; None otherwise."""
    if len(shape) != 4 or not dtype.startswith("float"):
        return None
    c_first, c_last = shape[1], shape[3]
    if isinstance(c_first, int) and c_first in (1, 3, 4):
        return "NCHW"
    if isinstance(c_last, int) and c_last in (1, 3, 4):
        return "NHWC"
    return "NCHW"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model's signature: its inputs and outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def example_feeds(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random feeds that fit the inputs: a dynamic first axis is ``batch``, any other dynamic axis (an image's
        height and width, a sequence's length) ``DYNAMIC_EXTENT``, so a convolution has room for its kernel and an
        exporter does not specialise the axis to 1."""
        import numpy as np

        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = tuple(d if isinstance(d, int) else batch if i == 0 else DYNAMIC_EXTENT
                          for i, d in enumerate(t.shape))
            if np.issubdtype(np.dtype(t.dtype), np.integer):
                feeds[t.name] = rng.integers(0, 2, size=shape).astype(t.dtype)
            elif t.dtype == "bool":
                feeds[t.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in d.get("inputs", ())),
            tuple(TensorSpec.from_dict(t) for t in d.get("outputs", ())),
        )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class Artifact:
    """A file a target wrote, with what is needed to run it and to tell it apart from others."""

    path: Path  # absolute while building; relative to the build folder in the manifest
    format: ModelFormat
    precision: Precision
    target: str
    spec: InputSpec
    sha256: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<profile>/<precision>`` as the user asked for it (``cpu/int8``); the backend when no profile."""
        return f"{self.metadata.get('profile', self.target)}/{self.precision.value}"

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        path = self.path.relative_to(root) if root is not None else self.path
        return {
            "path": path.as_posix(),
            "format": self.format.value,
            "precision": self.precision.value,
            "target": self.target,
            "sha256": self.sha256,
            "size_bytes": (root / path).stat().st_size if root is not None else self.path.stat().st_size,
            **self.spec.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Path | None = None) -> Artifact:
        path = Path(d["path"])
        return cls(
            path=(root / path) if root is not None else path,
            format=ModelFormat(d["format"]),
            precision=Precision(d["precision"]),
            target=d["target"],
            spec=InputSpec.from_dict(d),
            sha256=d.get("sha256", ""),
            metadata=dict(d.get("metadata", {})),
        )


Feeds = dict[str, "np.ndarray"]


@runtime_checkable
class CalibrationSet(Protocol):
    """An iterable of ``{input_name: ndarray}`` samples, each shaped like the model's inputs.

    ``fingerprint`` identifies the data (a content hash), so stages that depend on it can be cached.
    """

    @property
    def fingerprint(self) -> str: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Feeds]: ...


class ArrayCalibrationSet:
    """A calibration set held in memory: a list of feeds. What the readers in edgec.calibration_data return."""

    def __init__(self, samples: Iterable[Feeds], source: str = "<memory>"):
        self.samples = list(samples)
        self.source = source
        self._fingerprint: str | None = None
        #: input name -> how the source stacked its samples ("batch axis" / "new leading axis"), when known
        self.readings: dict[str, str] = {}

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            import numpy as np

            h = hashlib.sha256()
            for feeds in self.samples:
                for name in sorted(feeds):
                    arr = np.ascontiguousarray(feeds[name])
                    h.update(name.encode())
                    h.update(str(arr.dtype).encode())
                    h.update(str(arr.shape).encode())
                    h.update(arr.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Feeds]:
        return iter(self.samples)

    def stacked(self) -> Feeds:
        """All samples concatenated along the first axis (the batch axis)."""
        import numpy as np

        if not self.samples:
            return {}
        return {name: np.concatenate([s[name] for s in self.samples]) for name in self.samples[0]}



@dataclasses.dataclass
class LayerOutput:
    """One tensor a runtime wrote during one inference, read for the layer-by-layer comparison
    (``Runner.layer_outputs``): an op's output, or a model input."""

    tensor: str  # its name in the model file, unique within one list
    op: str  # the op that wrote it, as the runtime names it ("CONV_2D"); "" for a model input
    index: int  # the op's position in execution order; -1 for a model input
    inputs: tuple[str, ...]  # the tensors of the same list the op reads (weights and constants left out)
    value: np.ndarray  # float32 (dequantized), in the layout the file holds
    module: str | None = None  # its source module ("layer1.0.conv (Conv2d)"), when the file's names tell

@dataclasses.dataclass
class LoadedModel:
    """A model in memory: a torch module (``kind='torch'``) or an ONNX file (``kind='onnx'``)."""

    kind: str
    spec: InputSpec
    source: Path
    format: str  # exported-program | torchscript | state-dict | safetensors | pickled-module | onnx
    module: Any = None  # torch.nn.Module (or ScriptModule) when kind == "torch"
    exported: Any = None  # the ExportedProgram, when the checkpoint was one
    onnx_path: Path | None = None


@dataclasses.dataclass
class OnnxModel:
    """An FP32 ONNX file and its signature, plus how it was made."""

    path: Path
    spec: InputSpec
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)


@dataclasses.dataclass
class CalibrationStats:
    """Per-tensor activation ranges of one ONNX model, in ONNX Runtime's calibration-cache file (JSON).

    Every target that wants a QDQ model quantizes from the same file, so the data is read once.
    """

    path: Path
    method: str
    samples: int
    tensors: int = 0
    #: npz: for each input of a linear layer (MatMul/Gemm with a constant weight) of an attention model, the
    #: largest |value| per channel (last axis) over the calibration set: what smoothing needs (None: not taken)
    channel_max: Path | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.channel_max is not None:
            self.channel_max = Path(self.channel_max)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Tensor name -> (low, high) as calibrated (the file is ONNX Runtime's, read with its loader)."""
        import numpy as np
        from onnxruntime.quantization.calibrate import load_tensors_data

        def scalar(x: Any) -> float:
            return float(np.asarray(x).ravel()[0])

        data = load_tensors_data(self.path)
        return {k: (scalar(v.range_value[0]), scalar(v.range_value[1])) for k, v in data.items()}
