"""Is the calibration set representative? Measured on the held-out samples the build verifies with.

Static INT8 fixes each activation tensor's range from the calibration samples; a value outside it is clipped to
the range's end. Run over the held-out samples, the FP32 export shows what share of each calibrated tensor's
values falls outside its range (``clipped_fractions``), and how far each input's statistics moved from the
calibration samples' (``input_shift``). ``representativeness`` turns both into the manifest's record and the
warnings the build prints: the tensors and inputs where clipping is high, a calibration set too small, held-out
inputs whose statistics differ from the calibration samples'.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.types import CalibrationSet, Feeds

#: A tensor with more than this share of its held-out values outside its calibrated range is flagged.
CLIPPED_HIGH = 0.01
#: Fewer calibration samples than this get a warning (a few hundred is the usual advice; this is the floor).
SMALL_CALIBRATION = 32
#: An input whose held-out mean moved by more than this many calibration standard deviations is flagged.
SHIFT_HIGH = 0.5
#: Tensors listed in the record, worst first.
LISTED = 10


@dataclasses.dataclass
class Clipping:
    """One calibrated tensor over the held-out samples."""

    tensor: str
    fraction: float  # share of its values outside [low, high]
    low: float
    high: float
    seen_low: float
    seen_high: float
    is_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "clipped": round(self.fraction, 6), "range": [self.low, self.high],
                "seen": [self.seen_low, self.seen_high], **({"input": True} if self.is_input else {})}


def clipped_fractions(onnx_path: Path, ranges: Mapping[str, tuple[float, float]],
                      samples: Sequence[Feeds]) -> list[Clipping]:
    """Per calibrated float tensor of the FP32 model at ``onnx_path``, the share of its values over ``samples``
    outside its calibrated range; worst first."""
    import onnx

    from edgec.benchmarks.compare import _float_tensors
    from edgec.compiler.onnxutil import expose_outputs, ort_session

    model = onnx.load(str(onnx_path))
    inputs = {i.name for i in model.graph.input}
    types = _float_tensors(model)
    produced = [n for n in ranges if n in types]
    counts = {n: [0, 0, np.inf, -np.inf] for n in [*produced, *(i for i in inputs if i in ranges)]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exposed.onnx"
        expose_outputs(model, produced, path, types)
        session = ort_session(path, threads=1, level="basic")
        names = [o.name for o in session.get_outputs()]
        wanted = [n for n in names if n in counts]
        for feeds in samples:
            values = dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})))
            values.update({k: v for k, v in feeds.items() if k in counts})
            for name in counts.keys() & ({*wanted} | feeds.keys()):
                x = np.asarray(values[name], dtype=np.float64)
                if x.size == 0:
                    continue
                low, high = ranges[name]
                tol = 1e-6 * max(1.0, high - low)
                c = counts[name]
                c[0] += int(np.count_nonzero((x < low - tol) | (x > high + tol)))
                c[1] += x.size
                c[2], c[3] = min(c[2], float(x.min())), max(c[3], float(x.max()))
    found = [Clipping(n, c[0] / c[1], *ranges[n], c[2], c[3], is_input=n in inputs)
             for n, c in counts.items() if c[1]]
    return sorted(found, key=lambda c: -c.fraction)


def input_shift(calibration: Iterable[Feeds], held: Sequence[Feeds]) -> dict[str, float]:
    """Per float input: how far the held-out samples' mean is from the calibration samples', in calibration
    standard deviations (over all values of all samples; summed as they stream, one pass over each set)."""

    def moments(samples: Iterable[Feeds]) -> dict[str, tuple[float, float]]:
        sums: dict[str, list[float]] = {}
        for sample in samples:
            for name, value in sample.items():
                x = np.asarray(value)
                if not np.issubdtype(x.dtype, np.floating):
                    continue
                x = x.astype(np.float64)
                n, total, squares = sums.setdefault(name, [0.0, 0.0, 0.0])
                sums[name] = [n + x.size, total + float(x.sum()), squares + float(np.square(x).sum())]
        out = {}
        for name, (n, total, squares) in sums.items():
            mean = total / max(n, 1.0)
            out[name] = (mean, max(squares / max(n, 1.0) - mean * mean, 0.0) ** 0.5)
        return out

    calib, other = moments(calibration), moments(held)
    return {name: abs(other[name][0] - mean) / spread if spread > 0 else 0.0
            for name, (mean, spread) in calib.items() if name in other}


def representativeness(onnx_path: Path, ranges: Mapping[str, tuple[float, float]], method: str,
                       calibration: CalibrationSet, held: Sequence[Feeds], held_source: str,
                       held_in_calibration: bool, held_back: int = 0) -> tuple[dict[str, Any], list[str]]:
    """The manifest's record of how well the calibration ranges cover the held-out samples, and the warnings
    to print. ``held_back``: how many samples of the given calibration set were held out to verify."""
    clips = clipped_fractions(onnx_path, ranges, held)
    flagged = [c for c in clips if c.fraction > CLIPPED_HIGH]
    shifts = input_shift(calibration, held)
    shifted = {k: v for k, v in shifts.items() if v > SHIFT_HIGH}
    warnings = []
    if len(calibration) < SMALL_CALIBRATION:
        back = f" once {held_back} are held out to verify" if held_back else ""
        warnings.append(f"only {len(calibration)} calibration samples{back}: ranges from so few rarely hold on "
                        f"real inputs (give {SMALL_CALIBRATION} or more, a few hundred for detectors and encoders)")
    if flagged:
        worst = ", ".join(f"'{c.tensor}' {100 * c.fraction:.1f}%" for c in flagged[:4])
        warnings.append(f"{len(flagged)} calibrated tensor(s) clip more than {100 * CLIPPED_HIGH:g}% of their values "
                        f"on {held_source}: {worst}{' ...' if len(flagged) > 4 else ''} (calibration method "
                        f"{method}; the calibration data may not cover what the model will see)")
    for name, shift in shifted.items():
        warnings.append(f"input '{name}': {held_source} differ from the calibration samples (mean moved by "
                        f"{shift:.2f} standard deviations): calibrate with data like the model's real inputs")
    record = {
        "held_out": held_source,
        "method": method,
        "tensors_checked": len(clips),
        "clipped_above": CLIPPED_HIGH,
        "flagged": [c.tensor for c in flagged],
        "worst": [c.to_dict() for c in clips[:LISTED]],
        "mean_clipped": round(float(np.mean([c.fraction for c in clips])), 6) if clips else 0.0,
        "input_shift_sd": {k: round(v, 4) for k, v in shifts.items()},
        "warnings": warnings,
    }
    if held_in_calibration:
        record["note"] = "the held-out samples were also calibration samples: clipping of new inputs is not seen"
    return record, warnings
