"""Feeding a torch model to ``torch.export`` and PT2E calibration: example arguments and calibration batches.

Shared by the targets that quantize the torch model themselves (tflite through litert-torch's PT2E quantizer,
executorch through ExecuTorch's XNNPACKQuantizer), so both are calibrated on the same samples, cut the same way.
numpy only at import; torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError
from edgec.compiler.types import CalibrationSet, InputSpec


def pick(feeds: dict[str, Any], name: str, position: int, count: int) -> np.ndarray | None:
    """The feed named ``name``; else, when ``feeds`` holds ``count`` arrays (one per model input), the one at
    ``position``; else None."""
    if name in feeds:
        return np.asarray(feeds[name])
    if len(feeds) == count:
        return np.asarray(list(feeds.values())[position])
    return None


def sample_args(spec: InputSpec, in_perm: list | None = None) -> tuple:
    """Example arguments for ``torch.export``: one tensor per input at the spec's concrete shape (dynamic axes
    at 1), transposed by ``in_perm`` where it names a permutation."""
    import torch

    args = []
    for t, perm in zip(spec.inputs, in_perm or [None] * len(spec.inputs)):
        shape = t.concrete_shape(1)
        if np.issubdtype(np.dtype(t.dtype), np.integer):
            arr = np.zeros(shape, dtype=t.dtype)
        else:
            arr = np.random.default_rng(0).random(shape, dtype=np.float32).astype(t.dtype)
        if perm is not None:
            arr = arr.transpose(perm)
        args.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return tuple(args)


def calibration_batches(spec: InputSpec, calibration: CalibrationSet, in_perm: list | None = None) -> Iterator[tuple]:
    """Calibration samples as model arguments, one call per sample, transposed by ``in_perm`` where it names a
    permutation (the graph is fixed at the spec's concrete shapes: each input's first axis is its own, a batch
    of 1 when dynamic or a state's layers when fixed, so a sample of several rows is cut into calls)."""
    import torch

    names = spec.input_names
    perms = in_perm or [None] * len(spec.inputs)
    for k, sample in enumerate(calibration):
        groups = []
        for i, t in enumerate(spec.inputs):
            arr = pick(sample, t.name, i, len(names))
            if arr is None:
                raise CalibrationError(
                    f"calibration sample {k} has inputs {list(sample)}; the model needs {names}",
                    hint="name the calibration arrays like the model's inputs",
                )
            if arr.ndim != len(t.shape):
                raise CalibrationError(
                    f"calibration sample {k}: input '{t.name}' has shape {arr.shape}, the model needs "
                    f"{t.shape_str()}",
                    hint="lay calibration data out like the model's input (NCHW for images)",
                )
            rows = t.concrete_shape(1)[0] if t.shape else None
            parts = [arr[j:j + rows] for j in range(0, arr.shape[0] - rows + 1, rows)] if rows else [arr]
            groups.append(parts)
        for call in zip(*groups):
            args = []
            for part, t, perm in zip(call, spec.inputs, perms):
                if perm is not None:
                    part = part.transpose(perm)
                args.append(torch.from_numpy(np.ascontiguousarray(part, dtype=t.dtype)))
            yield tuple(args)
