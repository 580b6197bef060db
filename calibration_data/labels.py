"""Class labels for evaluation sets: one integer per sample, from .npy, .npz, .txt or .csv."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgec.calibration_data.arrays import shape_str
from edgec.compiler.errors import CalibrationError, InputFileError

LABEL_SUFFIXES = (".npy", ".npz", ".txt", ".csv")
_HINT = (
    "pass --labels a .npy (1-D integers), a .npz with an array named 'labels', "
    "or a .txt/.csv (one integer per line)"
)


def load_labels(path: str | Path, expected: int | None = None) -> np.ndarray:
    """Read class labels as a 1-D int64 array.

    Args:
        path: a ``.npy`` of integers (1-D, or Nx1), a ``.npz`` holding an array named ``labels``, or a
            ``.txt``/``.csv`` with one integer per line (blank lines skipped; a ``.csv`` may start with a
            header).
        expected: the number of samples the labels go with; a different count is a CalibrationError.

    Float labels are accepted when every value is a whole number (as pandas tends to save them).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputFileError(f"labels file '{path}' does not exist", hint=_HINT)
    if suffix not in LABEL_SUFFIXES:
        raise InputFileError(f"labels file '{path}' has an unknown extension '{path.suffix}'", hint=_HINT)
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "labels" not in z.files:
                    present = ", ".join(z.files) or "none"
                    raise CalibrationError(
                        f"{path}: no array named 'labels' (arrays present: {present})",
                        hint="save the labels with np.savez(path, labels=...)",
                    )
                arr = z["labels"]
        else:
            arr = _read_text(path, header_allowed=suffix == ".csv")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputFileError(f"cannot read labels file '{path}': {exc}", hint=_HINT) from None
    labels = _as_int_labels(arr, path)
    if expected is not None and len(labels) != expected:
        raise CalibrationError(
            f"{path}: {len(labels)} labels, but the evaluation data has {expected} samples",
            hint="give exactly one label per sample, in the same order",
        )
    return labels


def _read_text(path: Path, header_allowed: bool) -> np.ndarray:
    values: list[int] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            values.append(int(text))
        except ValueError:
            if header_allowed and not values and lineno == _first_nonblank(lines):
                continue
            raise CalibrationError(
                f"{path}, line {lineno}: '{text}' is not an integer label", hint="write one integer per line"
            ) from None
    return np.asarray(values, dtype=np.int64)


def _first_nonblank(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines, 1) if line.strip())


def _as_int_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise CalibrationError(
            f"{path}: labels must be 1-D (one per sample), found shape {shape_str(arr.shape)}",
            hint="save the class indices as a 1-D integer array",
        )
    if arr.size == 0:
        raise CalibrationError(f"{path}: no labels", hint="give one integer label per sample")
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise CalibrationError(
            f"{path}: labels must be integers (class indices), found {arr.dtype}",
            hint="save the class indices as integers",
        )
    return arr.astype(np.int64)
