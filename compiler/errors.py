"""Errors the user can act on, and failures inside a build stage (StageError): each ends in one ``error:`` line
and an exit code. Anything else that escapes is a bug and keeps its traceback.

Each class carries the exit code the CLI returns for it; ``tests/driver/test_exit_codes.py`` checks that the
README's table of exit codes and ``edgec --help`` list every one of them.
"""

from __future__ import annotations


class EdgecError(Exception):
    """Base of every error the user can fix: a message naming the thing, and a hint saying what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(EdgecError):
    """An option, recipe key, target or precision that is unknown or inconsistent."""

    exit_code = 2


class InputFileError(EdgecError):
    """A file named on the command line is missing or unreadable."""

    exit_code = 3


class CheckpointError(EdgecError):
    """A checkpoint that cannot be loaded, or a model that rejects the declared inputs."""

    exit_code = 3


class CalibrationError(EdgecError):
    """Calibration or evaluation data that does not fit the model (shape, dtype, NaN, too few samples)."""

    exit_code = 3


class ExportError(EdgecError):
    """The model could not be exported to ONNX."""

    exit_code = 4


class PruneError(ExportError):
    """The model could not be pruned: torch-pruning cannot trace it, or it fails once pruned."""

    exit_code = 4


class QuantizationError(EdgecError):
    """Quantization failed or produced an unusable model."""

    exit_code = 4


class TargetBuildError(EdgecError):
    """A target failed to build an artifact."""

    exit_code = 4


class TargetUnavailableError(EdgecError):
    """A target's runtime or toolchain is not installed; the hint names the extra to install."""

    exit_code = 5


class GateFailed(EdgecError):
    """A benchmark gate (accuracy drop, latency) was broken."""

    exit_code = 6


class StageError(EdgecError):
    """A stage failed with something other than an EdgecError: a third-party tool's exception or an edgec bug.

    The build still ends with one ``error:`` line and exit code 4, never a traceback: the message names the
    failing stage, the stages that ran before it and the exception; ``EDGEC_DEBUG=1`` shows the traceback.
    """

    exit_code = 4

    def __init__(self, stage: str, before: list[str], cause: BaseException):
        ran = ", ".join(before) if before else "none"
        reason = " ".join(str(cause).split())[:400] or "(no message)"
        super().__init__(
            f"stage '{stage}' failed (stages before it: {ran}): {type(cause).__name__}: {reason}",
            hint="if the message names an op, input or option, change that and rebuild; otherwise rerun with "
            "EDGEC_DEBUG=1 for the traceback and report it",
        )
        self.stage = stage


ALL_ERRORS: tuple[type[EdgecError], ...] = (
    ConfigError,
    InputFileError,
    CheckpointError,
    CalibrationError,
    ExportError,
    PruneError,
    QuantizationError,
    TargetBuildError,
    TargetUnavailableError,
    GateFailed,
    StageError,
)


def missing_dependency(package: str, extra: str, purpose: str) -> TargetUnavailableError:
    """The error for an optional dependency that is not installed."""
    return TargetUnavailableError(
        f"{purpose} needs the Python package '{package}', which is not installed",
        hint=f"pip install 'edgec[{extra}]' (or: make install)",
    )
