"""The one interface a target implements, and the Runner it hands to the benchmark harness."""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from edgec.compiler.errors import ConfigError, missing_dependency
from edgec.compiler.types import Artifact, Feeds, InputSpec, LayerOutput, ModelFormat, Precision


class Runner(abc.ABC):
    """Runs one artifact. A context manager; never times itself (the harness does)."""

    #: Name and version of the runtime that runs the artifact, for the results.
    runtime: str = ""

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abc.abstractmethod
    def load(self) -> None: ...

    def close(self) -> None:
        pass

    @abc.abstractmethod
    def input_specs(self) -> InputSpec: ...

    @abc.abstractmethod
    def infer(self, feeds: Feeds) -> dict[str, Any]:
        """Outputs by name, as numpy arrays, for one set of feeds laid out like ``input_specs()``."""

    def call(self, feeds: Feeds) -> Any:
        """One inference as the harness times it: the runtime's own call, its outputs in whatever form the
        runtime gives them. Defaults to ``infer``; a runner whose ``infer`` does bookkeeping around the call
        (naming the outputs) overrides it, so the clock holds the runtime alone."""
        return self.infer(feeds)

    def layer_outputs(self, feeds: Feeds) -> list[LayerOutput] | None:
        """Every intermediate tensor of one inference (and the model inputs), in execution order, for the
        layer-by-layer comparison; None when this runtime cannot expose them (the default). Called on a loaded
        runner; may run a slower, unfused copy of the model, since it is never timed."""
        return None


def describe_options(options_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for each field of an Options dataclass."""
    rows = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append((f.name, str(f.type), default, f.metadata.get("help", "")))
    return rows


def parse_options(options_cls: type, values: dict[str, Any], where: str) -> Any:
    """Build an Options dataclass from a mapping, naming any unknown key and any value of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"unknown option '{key}' for {where}", hint=f"valid options: {', '.join(fields) or 'none'}"
            )
    opts = options_cls(**values)
    for f in dataclasses.fields(options_cls):
        choices = f.metadata.get("choices")
        value = getattr(opts, f.name)
        if choices and value not in choices:
            raise ConfigError(
                f"option {f.name}={value!r} for {where} is not valid", hint=f"use one of: {', '.join(map(str, choices))}"
            )
        if value is not None and f.type in ("bool", bool) and not isinstance(value, bool):
            raise ConfigError(f"option {f.name} for {where} must be true or false, not {value!r}")
        bounds = f.metadata.get("range")
        if bounds and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                           and bounds[0] <= value <= bounds[1]):
            raise ConfigError(f"option {f.name}={value!r} for {where} is not valid",
                              hint=f"give a number from {bounds[0]:g} to {bounds[1]:g}")
    return opts


def require_packages(packages: tuple[str, ...], extra: str, purpose: str) -> None:
    """Import each package, or raise the TargetUnavailableError naming it and the extra that installs it.

    Importing (not just finding) also catches an installed package that is broken.
    """
    import importlib

    for pkg in packages:
        try:
            importlib.import_module(pkg)
        except ImportError:
            raise missing_dependency(pkg, extra, purpose) from None


@dataclasses.dataclass
class NoOptions:
    pass


class Target(abc.ABC):
    name: ClassVar[str]  # == folder name == registry key
    consumes: ClassVar[ModelFormat]
    precisions: ClassVar[frozenset[Precision]]
    Options: ClassVar[type] = NoOptions
    #: Packages whose versions change what ``build`` writes (part of the build cache key).
    tools: ClassVar[tuple[str, ...]] = ()
    #: Its artifacts run on the build host as they will where they are deployed (an x86 CPU runtime), so the
    #: build can time them against FP32; other targets' latency is the device's (``edgec bench --remote``).
    timed_on_host: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    @abc.abstractmethod
    def check_available(cls) -> None:
        """Raise TargetUnavailableError, with the install hint, when the runtime is missing."""

    def reads(self, precision: Precision) -> tuple[str, ...]:
        """Pipeline values this target needs for ``precision``: the model, then what ``build`` gets as
        ``calibration``, then optionally "calibration" again, passed as ``samples`` (a target that needs both
        the statistics and the raw samples)."""
        if self.consumes == ModelFormat.ONNX:
            return ("onnx", "calibration_stats") if precision == Precision.INT8 else ("onnx",)
        return ("model", "calibration") if precision == Precision.INT8 else ("model",)

    @abc.abstractmethod
    def build(self, model: Any, precision: Precision, calibration: Any, out_dir: Path) -> list[Artifact]:
        """Write this precision's artifacts into ``out_dir`` and describe them."""

    #: How this backend turns a PyTorch model into its format, for messages ("converts ... (litert-torch)").
    converter: ClassVar[str] = ""

    def requires(self, precision: Precision) -> tuple[str, ...]:
        """What a build of ``precision`` needs besides a checkpoint, checked once, when the build is planned
        (``edgec.api.plan_build``): "torch" (a PyTorch model: an ONNX checkpoint has no route this backend
        can verify) and "calibration" (calibration data, for INT8)."""
        needs = ("torch",) if self.consumes == ModelFormat.TORCH else ()
        return needs + (("calibration",) if precision == Precision.INT8 else ())

    #: What the accuracy fallback keeps a layer in (``keep_in_higher_precision``), for the manifest and messages.
    higher_precision: ClassVar[str] = ""

    def keep_in_higher_precision(self, nodes: list[str]) -> Target | None:
        """A copy of this target that keeps ``nodes`` (nodes of the FP32 ONNX export, worst first) in higher
        precision (``higher_precision``) in its INT8 artifact, or None when it has no way to."""
        return None

    def finish_folder(self, folder: Path, artifacts: list[Artifact]) -> list[Path]:
        """Write files that describe a whole profile folder once all its precisions are in it (a bundle
        manifest, a README); returns them. Most targets have none."""
        return []

    @classmethod
    @abc.abstractmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> Runner:
        """The runner of a built artifact (not loaded yet). A class method: running a file needs none of the
        build side (options, the host's CPU facts a build resolves)."""
