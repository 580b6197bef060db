"""Runs a .pte artifact in ExecuTorch's Python runtime (``executorch.runtime``, XNNPACK and portable kernels).

Feeds come laid out like the artifact's spec (the program keeps the spec's layout and float32 I/O at every
precision); a batch larger than the program's fixed batch of 1 runs one row at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, InputFileError
from edgec.compiler.types import Feeds, InputSpec
from edgec.compiler.versions import version_of
from edgec.targets.base import Runner
from edgec.targets.executorch.lower import PteIO, execute, load_method
from edgec.targets.pt2e import pick


class ExecuTorchRunner(Runner):
    """One .pte file's ``forward``."""

    def __init__(self, path: Path, spec: InputSpec, inputs: list[PteIO], outputs: list[PteIO],
                 threads: int | None = None):
        self.path = Path(path)
        self.spec = spec
        self.inputs = inputs
        self.outputs = outputs
        self.threads = threads
        self.method: Any = None

    def load(self) -> None:
        try:
            self.method = load_method(self.path, self.threads)
        except RuntimeError as exc:
            raise InputFileError(
                f"ExecuTorch's runtime cannot load '{self.path}': {' '.join(str(exc).split())[:300]}",
                hint=f"rebuild it with edgec build (this runtime is executorch {version_of('executorch') or '?'})",
            ) from None
        self.runtime = f"executorch {version_of('executorch') or '?'} (XNNPACK)"

    def close(self) -> None:
        self.method = None

    def input_specs(self) -> InputSpec:
        return self.spec

    def _arrays(self, feeds: Feeds) -> list[np.ndarray]:
        arrays = []
        for i, io_ in enumerate(self.inputs):
            arr = pick(feeds, io_.name, i, len(self.inputs))
            if arr is None:
                raise CalibrationError(
                    f"no feed for input '{io_.name}' of '{self.path.name}' (got {list(feeds)})",
                    hint="name the inputs like the model's",
                )
            arrays.append(arr if arr.dtype.name == io_.dtype else arr.astype(io_.dtype))
        return arrays

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        arrays = self._arrays(feeds)
        if all(a.shape == io_.shape for a, io_ in zip(arrays, self.inputs)):
            outs = execute(self.method, arrays)
        else:
            rows = {a.shape[0] if a.ndim else None for a in arrays}
            fits = all(
                a.ndim == len(io_.shape) and io_.shape[:1] == (1,) and a.shape[1:] == io_.shape[1:]
                for a, io_ in zip(arrays, self.inputs)
            )
            if not fits or len(rows) != 1:
                got = ", ".join(f"{io_.name}:{'x'.join(map(str, a.shape))}" for a, io_ in zip(arrays, self.inputs))
                want = ", ".join(f"{io_.name}:{'x'.join(map(str, io_.shape))}" for io_ in self.inputs)
                raise CalibrationError(
                    f"'{self.path.name}' takes inputs {want}, not {got}",
                    hint="give samples shaped like the model's input",
                )
            per_row = [execute(self.method, [a[i:i + 1] for a in arrays]) for i in range(rows.pop())]
            outs = [np.concatenate([r[k] for r in per_row]) for k in range(len(self.outputs))]
        return {io_.name: o for io_, o in zip(self.outputs, outs)}
