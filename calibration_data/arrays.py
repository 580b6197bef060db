"""Arrays into per-sample feeds that fit a model input: splitting on the sample axis, dtype casts, finiteness.

Shared by every reader so that an ``.npz``, an image folder and a callable are held to the same rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError
from edgec.compiler.types import TensorSpec


def shape_str(shape: tuple[Any, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def per_sample(tensor: TensorSpec) -> int:
    """Rows of a stacked array per sample: the input's fixed batch size, or 1 when it is 1 or dynamic."""
    lead = tensor.shape[0] if tensor.shape else 1
    return lead if isinstance(lead, int) else 1


#: How an array holds its samples: along the input's own first (batch) axis, or on a new leading axis (for
#: inputs whose first axis is not a batch, such as a recurrent state [layers, 1, hidden]).
BATCH_AXIS = "batch axis"
NEW_AXIS = "new leading axis"


def _fits(shape: tuple[int, ...], dims: tuple[Any, ...]) -> bool:
    return len(shape) == len(dims) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape))


def reading(arr: np.ndarray, tensor: TensorSpec) -> str | None:
    """How ``arr`` stacks samples for ``tensor``: ``BATCH_AXIS`` when ``arr.shape[1:]`` fits the input's shape
    after its first axis (rows are split into samples of the input's batch size), ``NEW_AXIS`` when
    ``arr.shape[1:]`` fits the whole input shape (each ``arr[i]`` is one sample). The two differ in rank, so an
    array fits at most one; None when it fits neither."""
    if not tensor.shape:
        return BATCH_AXIS if arr.ndim == 1 else None
    if arr.ndim == len(tensor.shape) and _fits(arr.shape[1:], tensor.shape[1:]):
        return BATCH_AXIS
    if arr.ndim == len(tensor.shape) + 1 and _fits(arr.shape[1:], tensor.shape):
        return NEW_AXIS
    return None


def check_stacked(arr: np.ndarray, tensor: TensorSpec, source: str, what: str) -> tuple[int, str]:
    """Check an array that stacks samples; returns the number of samples it holds and how (``reading``).

    ``what`` names the array in messages (``array 'x'``, ``item 3``).
    """
    how = reading(arr, tensor)
    if how is None:
        batch = ("N",) + tuple(tensor.shape[1:]) if tensor.shape else ("N",)
        new = ("N",) + tuple(tensor.shape)
        # An input whose first axis is fixed above 1 is rarely a batch (a state's layers, a pair of images):
        # suggest the new-axis layout first, so a hint never mixes that axis into samples.
        first = tensor.shape[0] if tensor.shape else 1
        best, other = (new, batch) if isinstance(first, int) and first > 1 else (batch, new)
        raise CalibrationError(
            f"{source}: {what} has shape {shape_str(arr.shape)}, but input '{tensor.name}' is "
            f"{tensor.shape_str()}: stack N samples as {shape_str(new)} (each [i] one sample) or as "
            f"{shape_str(batch)} (along the input's batch axis)",
            hint=f"reshape the data for input '{tensor.name}' to {shape_str(best)} (or {shape_str(other)})",
        )
    if how == NEW_AXIS:
        return arr.shape[0], how
    per = per_sample(tensor)
    if arr.shape[0] % per:
        raise CalibrationError(
            f"{source}: {what} has {arr.shape[0]} rows, not a multiple of input '{tensor.name}''s fixed "
            f"batch size {per}",
            hint=f"give a multiple of {per} rows, or stack samples on a new leading axis: "
            f"{shape_str(('N',) + tuple(tensor.shape))}",
        )
    return arr.shape[0] // per, how


def take_sample(arr: np.ndarray, tensor: TensorSpec, index: int, how: str = BATCH_AXIS) -> np.ndarray:
    """Sample ``index`` of a stacked array read as ``how``, keeping the batch axis (``arr[i:i+1]`` for a batch
    of 1)."""
    if not tensor.shape:
        return arr[index]
    if how == NEW_AXIS:
        return arr[index]
    per = per_sample(tensor)
    return arr[index * per : (index + 1) * per]


def conform(arr: np.ndarray, tensor: TensorSpec, source: str, index: int) -> np.ndarray:
    """One sample as a contiguous array of the input's dtype, after checking its shape, dtype and values.

    float data for a float input is cast (float64 -> float32 silently); ints of another width for an int
    input are cast when every value fits. Anything else is a CalibrationError naming ``source``, the input
    and the sample ``index``.
    """
    name = tensor.name
    if not tensor.accepts(arr.shape):
        raise CalibrationError(
            f"{source}: sample {index} of input '{name}' has shape {shape_str(arr.shape)}, "
            f"expected {tensor.shape_str()}",
            hint=f"make every sample of input '{name}' {tensor.shape_str()}",
        )
    want, have = np.dtype(tensor.dtype), arr.dtype
    if want.kind == "f" and have.kind == "f":
        _check_finite(arr, name, source, index)
        with np.errstate(over="ignore"):  # overflow is reported below, with the input and sample named
            out = arr.astype(want)
        if not np.isfinite(out).all():
            raise CalibrationError(
                f"{source}: sample {index} of input '{name}' has values beyond the {want.name} range",
                hint=f"scale the data for input '{name}' into the {want.name} range",
            )
    elif want.kind in "iu" and have.kind in "iu":
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise CalibrationError(
                f"{source}: sample {index} of input '{name}' ({have.name}) has values outside the "
                f"{want.name} range [{info.min}, {info.max}] the input expects",
                hint=f"store input '{name}' as {want.name}",
            )
        out = arr.astype(want)
    elif want == have:
        out = arr
    else:
        raise CalibrationError(
            f"{source}: input '{name}' expects {want.name} data, found {have.name} (sample {index})",
            hint=_dtype_hint(name, want, have),
        )
    # A copy detaches the sample from the (possibly much larger) array it was sliced from.
    return np.array(out, dtype=want, copy=True, order="C")


def _check_finite(arr: np.ndarray, name: str, source: str, index: int) -> None:
    if np.isfinite(arr).all():
        return
    what = "NaN" if np.isnan(arr).any() else "Inf"
    raise CalibrationError(
        f"{source}: sample {index} of input '{name}' contains {what}",
        hint="clean or drop that sample; calibration and evaluation need finite values",
    )


def _dtype_hint(name: str, want: np.dtype, have: np.dtype) -> str:
    if want.kind == "f":
        return f"convert input '{name}' to {want.name} (and normalise it as the model expects) before saving"
    if want.kind in "iu" and have.kind == "f":
        return f"input '{name}' takes integers (e.g. token ids or indices): store them as {want.name}"
    return f"store input '{name}' as {want.name}"
