"""Bundled sample data: scikit-learn's 8x8 digits (they ship with scikit-learn, so nothing is downloaded).

The demo model trains on ``x_train``, is calibrated on ``x_calib`` and evaluated on ``x_eval``/``y_eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import TargetUnavailableError
from edgec.compiler.types import InputSpec, TensorSpec

EVAL_SIZE = 360
CALIB_SIZE = 200
# The name edgec gives a single-input torch model's input, so these files feed it without renaming.
INPUT_NAME = "input"


def digits_spec() -> InputSpec:
    """The inputs of a model that takes one digit: ``input`` 1x1x8x8 float32, NCHW."""
    return InputSpec((TensorSpec(INPUT_NAME, (1, 1, 8, 8), "float32", "NCHW"),))


def digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """The digits split into train, calibration and evaluation parts.

    Images are float32 ``[N, 1, 8, 8]`` in [0, 1] (pixel / 16); labels are int64. ``x_eval``/``y_eval``
    (360 samples) are held out, stratified by class; ``x_train``/``y_train`` are the other 1437;
    ``x_calib`` is 200 of the training images, stratified too. Calibration data overlaps the training data
    on purpose: it only has to look like what the model will see, and the evaluation part stays unseen.
    The split depends only on ``seed``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise TargetUnavailableError(
            "the bundled digits data needs the Python package 'scikit-learn', which is not installed",
            hint="pip install scikit-learn",
        ) from None
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=EVAL_SIZE, stratify=y, random_state=seed
    )
    _, x_calib = train_test_split(x_train, test_size=CALIB_SIZE, stratify=y_train, random_state=seed)
    return {
        "x_train": np.ascontiguousarray(x_train),
        "y_train": np.ascontiguousarray(y_train),
        "x_calib": np.ascontiguousarray(x_calib),
        "x_eval": np.ascontiguousarray(x_eval),
        "y_eval": np.ascontiguousarray(y_eval),
    }


def write_digits_sets(folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write ``calib.npz`` and ``eval.npz`` (array ``input``) and ``eval_labels.npy`` into ``folder``.

    Returns their paths under the keys ``calib``, ``eval`` and ``eval_labels``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = digits_split(seed)
    paths = {
        "calib": folder / "calib.npz",
        "eval": folder / "eval.npz",
        "eval_labels": folder / "eval_labels.npy",
    }
    np.savez(paths["calib"], **{INPUT_NAME: data["x_calib"]})
    np.savez(paths["eval"], **{INPUT_NAME: data["x_eval"]})
    np.save(paths["eval_labels"], data["y_eval"])
    return paths
