"""The tensor arena, measured: the smallest arena tflite-micro's interpreter runs the model in, found by bisection.

TFLM allocates everything (tensors, kernel state, scratch buffers) from one caller-provided arena when the
interpreter is built; a too-small arena fails there, before any inference. The recorded arena is the minimum
plus a stated margin, rounded up to 16 bytes (the alignment of the arena array in the firmware): the margin
absorbs the arena's start alignment on the device and small differences between TFLM builds (optimized
kernels such as CMSIS-NN ask for scratch buffers the host's reference kernels do not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import TargetBuildError

ALIGNMENT = 16
#: The largest arena the bisection tries: beyond it no microcontroller build makes sense.
MAX_ARENA = 256 << 20


@dataclasses.dataclass
class ArenaReport:
    minimum_bytes: int  # smallest arena the interpreter was built and ran in
    recorded_bytes: int  # what kTensorArenaSize says: minimum + margin, aligned
    margin: float
    persistent_bytes: int  # TFLM's own allocations (the arena's tail), from print_allocations()
    planned_bytes: int  # the tensors TFLM's planner laid out (the arena's head)
    probes: int  # interpreters built during the bisection
    method: str = "bisected with the tflite-micro interpreter on the host"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C++ code writes to file descriptor 2 (TFLM's MicroPrintf) instead of letting it through."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def interpreter(model: bytes, arena_size: int) -> Any:
    """A TFLM interpreter for ``model`` with an arena of ``arena_size`` bytes (raises when it does not fit)."""
    from tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena_size)


def zero_feeds(interp: Any, count: int) -> list[np.ndarray]:
    feeds = []
    for i in range(count):
        d = interp.get_input_details(i)
        feeds.append(np.zeros(tuple(int(s) for s in d["shape"]), dtype=d["dtype"]))
    return feeds


def input_count(model: bytes) -> int:
    from edgec.targets.tflm.ops import _model

    return len(_model(model).subgraphs[0].inputs)


def runs(model: bytes, arena_size: int, feeds: list[np.ndarray] | None = None) -> tuple[bool, str]:
    """(ran, what TFLM printed): build the interpreter with this arena and run one inference."""
    with captured_stderr() as log:
        try:
            interp = interpreter(model, arena_size)
            for i, arr in enumerate(feeds if feeds is not None else zero_feeds(interp, input_count(model))):
                interp.set_input(arr, i)
            interp.invoke()
            ok = True
        except (RuntimeError, ValueError):
            ok = False
    return ok, "".join(log)


def allocations(model: bytes, arena_size: int) -> dict[str, int]:
    """TFLM's RecordingMicroAllocator totals (total, head, tail) after one inference."""
    with captured_stderr() as log:
        interp = interpreter(model, arena_size)
        for i, arr in enumerate(zero_feeds(interp, input_count(model))):
            interp.set_input(arr, i)
        interp.invoke()
        interp.print_allocations()
    text = "".join(log)
    found = {}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            found[key] = int(m.group(1))
    return found


def _out_of_memory(log: str) -> bool:
    """Whether TFLM failed for want of arena (it says so) rather than for a missing kernel or a bad model."""
    text = log.lower()
    return any(word in text for word in ("allocate", "resize buffer", "arena", "missing:"))


def first_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def align(n: int, to: int = ALIGNMENT) -> int:
    return -(-n // to) * to


def recorded(minimum: int, margin: float) -> int:
    """The arena a firmware should declare for a measured minimum: + margin, rounded up to the alignment."""
    return align(int(np.ceil(minimum * (1.0 + margin))))


def measure(model_path: Path, margin: float) -> ArenaReport:
    """Bisect the smallest arena the model runs in; raise TargetBuildError when TFLM cannot run it at all."""
    model = Path(model_path).read_bytes()
    hi = align(max(4096, len(model)))
    probes = 0
    while True:
        probes += 1
        ok, log = runs(model, hi)
        if ok:
            break
        if hi >= MAX_ARENA or not _out_of_memory(log):
            raise TargetBuildError(
                f"tflite-micro cannot run '{Path(model_path).name}' (arena {hi} bytes): {first_error(log)}",
                hint="the model uses an op or type TFLM has no kernel for; simplify the model or use --target arm",
            )
        hi *= 4
    lo = 0  # fails (an empty arena always does)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probes += 1
        if runs(model, mid)[0]:
            hi = mid
        else:
            lo = mid
    alloc = allocations(model, hi)
    return ArenaReport(
        minimum_bytes=hi,
        recorded_bytes=recorded(hi, margin),
        margin=margin,
        persistent_bytes=alloc.get("tail", 0),
        planned_bytes=alloc.get("head", 0),
        probes=probes,
    )
