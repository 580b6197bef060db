"""Build-time verification: a compressed artifact against the FP32 reference on held-out data, in the terms of
each output's task, against an accuracy budget.

``edgec build`` runs every FP16/INT8 artifact on its own runtime over the held-out samples and calls
``judge``; an artifact that breaks the budget goes to the fallback (``edgec.benchmarks.sensitivity``), and one
the fallback cannot repair fails the build. ``edgec bench`` gates with the same budget figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgec.benchmarks.metrics import DROP_FIGURE, TaskMetrics, task_metrics
from edgec.compiler.errors import ConfigError
from edgec.compiler.tasks import GENERIC, OutputTask

#: The default budget per task, as the headline ``drop`` in points (see ``edgec.benchmarks.metrics``):
#: classification 1 point of accuracy or top-1 agreement; embedding and generic outputs a cosine of 0.99;
#: detection a detection quality (matched boxes x IoU) of 0.9; the rest a comparable loss.
DEFAULT_MAX_DROP = {
    "classification": 1.0, "multilabel": 1.0, "regression": 2.0, "embedding": 1.0, "detection": 10.0,
    "dense": 2.0, "sequence": 2.0, GENERIC: 1.0,
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How far a compressed artifact may be from FP32: per-task defaults unless the user set a figure."""

    max_drop: float | None = None  # points on every output's headline metric (None: DEFAULT_MAX_DROP per task)
    min_cosine: float | None = None  # lowest cosine to the reference of any output (None: not checked)

    def __post_init__(self) -> None:
        for name, value, low, high in (("--max-accuracy-drop", self.max_drop, 0.0, 100.0),
                                       ("--min-cosine", self.min_cosine, -1.0, 1.0)):
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {value:g}")

    def max_drop_for(self, task: OutputTask) -> float:
        return self.max_drop if self.max_drop is not None else DEFAULT_MAX_DROP[task.task]

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "min_cosine": self.min_cosine,
                "defaults": None if self.max_drop is not None else dict(DEFAULT_MAX_DROP)}


@dataclasses.dataclass
class Verdict:
    """One artifact's outputs against the reference's, judged against the budget."""

    artifact: str
    data: str  # what the samples were: "12 held-out calibration samples", "--verify-data eval.npz", ...
    samples: int
    metrics: dict[str, TaskMetrics]
    breaches: list[str]

    @property
    def passed(self) -> bool:
        return not self.breaches

    def line(self) -> str:
        """One line per artifact for the build output: each output's headline figure, and the verdict."""
        parts = []
        for m in self.metrics.values():
            value = f"{m.value:.4g}" if isinstance(m.value, float) else str(m.value)
            source = DROP_FIGURE.get(m.task) if m.drop_basis == "reference" else None
            if source in m.figures and source != m.headline:  # the figure the drop comes from, beside it
                value += f", {source} {m.figures[source]:.4g}"
            parts.append(f"{m.output} {m.task} {m.headline} {value} (drop {m.drop:.2f})")
        verdict = "ok" if self.passed else "OVER BUDGET"
        if not self.metrics:  # an attempt that did not build: its breach says why
            return f"{self.artifact}: {'; '.join(self.breaches)}"
        return f"{self.artifact}: {'; '.join(parts)} on {self.data}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact, "data": self.data, "samples": self.samples, "passed": self.passed,
            "breaches": list(self.breaches), "outputs": {k: m.to_dict() for k, m in self.metrics.items()},
        }


def judge(
    artifact: str,
    tasks: Sequence[OutputTask],
    reference: Sequence[dict[str, np.ndarray]],
    candidate: Sequence[dict[str, np.ndarray]],
    budget: Budget,
    *,
    data: str,
    labels: Any = None,
) -> Verdict:
    """Score every output of ``candidate`` (per sample, named like ``reference``) for its task and check the
    budget. ``labels`` go to the first classification output (the one a labels file describes)."""
    labelled = next((t.output for t in tasks if t.task == "classification"), None)
    metrics, breaches = {}, []
    for task in tasks:
        ref = [r[task.output] for r in reference]
        cand = [c[task.output] for c in candidate]
        m = task_metrics(task, ref, cand, labels if task.output == labelled else None)
        metrics[task.output] = m
        limit = budget.max_drop_for(task)
        if not m.drop <= limit:  # NaN breaks the budget too
            breaches.append(f"{task.output} ({task.task}): {m.headline} {m.value:.4g}, drop {m.drop:.2f} points "
                            f"> the budget of {limit:g}")
        cosine = m.figures.get("cosine")
        if budget.min_cosine is not None and not (cosine is not None and cosine >= budget.min_cosine):
            breaches.append(f"{task.output}: cosine {cosine:.4f} < --min-cosine {budget.min_cosine:g}")
    return Verdict(artifact, data, len(reference), metrics, breaches)


def latency_summary(check: dict[str, Any]) -> str:
    """An artifact's build-time latency check as the build summary and the report say it: the ratio to FP32 on
    the build host, the layers kept in float for speed, the fallback's cost (the ratio of the all-INT8 artifact
    before it kept layers in higher precision), and whether it is slower than FP32."""
    text = f"{check['ratio']:.2f}x FP32 ({check.get('host', '?')}, {check.get('threads', 1)} thread"
    if check.get("chosen") == "float-islands":
        text += f", {len(check['float_islands'].get('kept_float', []))} layer(s) kept in float for speed"
    text += ")"
    before = check.get("before_fallback")
    if before:
        text += f", {before['ratio']:.2f}x before the fallback kept {before['kept']} layer(s)"
    if check.get("slower_than_fp32"):
        text += ": slower than FP32 on this host" + (f" ({check['why']})" if check.get("why") else "")
    return text
