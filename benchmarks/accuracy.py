"""Accuracy of an artifact against a reference: per-output error figures, top-1 agreement, task accuracy."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError
from edgec.compiler.tasks import GENERIC

#: SNR is infinite when the outputs are identical; it is clipped to +-this many dB so the JSON stays valid.
SNR_CAP_DB = 200.0


@dataclasses.dataclass
class OutputMetrics:
    """How one output of the candidate differs from the reference's, over all samples."""

    name: str
    cosine: float
    snr_db: float
    max_abs_error: float
    mean_abs_error: float
    classification: bool = False
    rows: int = 0  # argmax rows compared (samples x batch rows) for a classification output
    top1_agreement: float | None = None  # % of rows whose argmax matches the reference's
    accuracy: float | None = None  # % of rows whose argmax equals the label
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None  # points: reference_accuracy - accuracy
    nonfinite_values: int = 0  # NaN/inf values in either output, left out of the figures above

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: The task whose figure is an artifact's headline when no labels pick the output: the first output of the
#: first task in this order. A generic output (no task evidence) has no headline: only its element-wise figures.
_HEADLINE_ORDER = ("classification", "detection", "embedding", "sequence", "dense", "multilabel", "regression")


@dataclasses.dataclass
class AccuracyReport:
    """Figures per output (element-wise, and in each output's task terms), plus the headline figures.

    The headline is the task metric of one output: the labelled classification output when labels were given,
    else the first output of the most telling task (``_HEADLINE_ORDER``). Reports without task metrics (saved
    by an older edgec) fall back to the first classification output's top-1 agreement.
    """

    per_output: dict[str, OutputMetrics]
    samples: int
    reference: str = ""  # what the candidate was compared against, e.g. "onnxruntime/fp32"
    tasks: dict[str, Any] = dataclasses.field(default_factory=dict)  # output -> TaskMetrics

    @property
    def headline(self) -> Any:
        """The TaskMetrics the headline figures come from, or None."""
        if not self.tasks:
            return None
        labelled = [m for m in self.tasks.values() if m.drop_basis == "labels"]
        if labelled:
            return labelled[0]
        scored = [m for m in self.tasks.values() if m.task in _HEADLINE_ORDER]
        return min(scored, key=lambda m: _HEADLINE_ORDER.index(m.task)) if scored else None

    @property
    def primary(self) -> OutputMetrics | None:
        """The first classification output, the one the headline figures come from."""
        for m in self.per_output.values():
            if m.classification:
                return m
        return None

    @property
    def agreement(self) -> float | None:
        p = self.primary
        return p.top1_agreement if p else None

    @property
    def accuracy(self) -> float | None:
        p = self.primary
        return p.accuracy if p else None

    @property
    def reference_accuracy(self) -> float | None:
        p = self.primary
        return p.reference_accuracy if p else None

    @property
    def drop_basis(self) -> str | None:
        """What the drop measures: "labels" (task accuracy), "agreement" (100 - top-1 agreement), or the
        headline task metric ("embedding mean_cosine")."""
        head = self.headline
        if head is not None:
            if head.drop_basis == "labels":
                return "labels"
            return "agreement" if head.headline == "top1_agreement" else f"{head.task} {head.headline}"
        p = self.primary
        if p is None:
            return None
        return "labels" if p.accuracy_drop is not None else "agreement"

    @property
    def accuracy_drop(self) -> float | None:
        """Points lost on the headline task metric (see ``edgec.benchmarks.metrics``): reference - candidate
        accuracy with labels, else 100 - top-1 agreement for a classifier, 100 x (1 - cosine) for an embedding..."""
        head = self.headline
        if head is not None:
            return head.drop
        p = self.primary
        if p is None:
            return None
        if p.accuracy_drop is not None:
            return p.accuracy_drop
        return None if p.top1_agreement is None else 100.0 - p.top1_agreement

    @property
    def min_cosine(self) -> float | None:
        return min((m.cosine for m in self.per_output.values()), default=None)

    @property
    def max_abs_error(self) -> float | None:
        return max((m.max_abs_error for m in self.per_output.values()), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "samples": self.samples,
            "agreement": self.agreement,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "drop_basis": self.drop_basis,
            "headline": None if self.headline is None else {
                "output": self.headline.output, "task": self.headline.task, "metric": self.headline.headline,
                "value": self.headline.value},
            "per_output": {name: m.to_dict() for name, m in self.per_output.items()},
            "tasks": {name: m.to_dict() for name, m in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccuracyReport:
        from edgec.benchmarks.metrics import TaskMetrics

        return cls(
            per_output={name: OutputMetrics.from_dict(m) for name, m in d["per_output"].items()},
            samples=int(d["samples"]),
            reference=d.get("reference", ""),
            tasks={name: TaskMetrics.from_dict(m) for name, m in (d.get("tasks") or {}).items()},
        )


def _is_classification(arr: np.ndarray) -> bool:
    return arr.ndim >= 1 and arr.shape[-1] > 1 and np.issubdtype(arr.dtype, np.floating)


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _percent(hits: np.ndarray) -> float:
    return float(np.mean(hits) * 100.0)


def _compare_one(
    name: str, ref: list[np.ndarray], cand: list[np.ndarray], labels: np.ndarray | None, primary: bool,
    argmax_rows: bool = True,
) -> OutputMetrics:
    for i, (r, c) in enumerate(zip(ref, cand)):
        if r.shape != c.shape:
            raise CalibrationError(
                f"output '{name}' of sample {i} has shape {c.shape}, the reference's has {r.shape}",
                hint="the artifact and the reference must be the same model with the same inputs",
            )
    r64 = np.concatenate([np.asarray(r, np.float64).ravel() for r in ref])
    c64 = np.concatenate([np.asarray(c, np.float64).ravel() for c in cand])
    finite = np.isfinite(r64) & np.isfinite(c64)
    nonfinite = int(finite.size - np.count_nonzero(finite))
    if nonfinite:
        r64, c64 = r64[finite], c64[finite]
    diff = np.abs(r64 - c64)
    metrics = OutputMetrics(
        name=name,
        cosine=_cosine(r64, c64),
        snr_db=_snr_db(float(np.sum(r64 * r64)), float(np.sum(diff * diff))),
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        nonfinite_values=nonfinite,
    )
    if not argmax_rows or not _is_classification(ref[0]):
        return metrics
    ref_top = np.concatenate([np.argmax(r, axis=-1).ravel() for r in ref])
    cand_top = np.concatenate([np.argmax(c, axis=-1).ravel() for c in cand])
    metrics.classification = True
    metrics.rows = int(ref_top.size)
    metrics.top1_agreement = _percent(ref_top == cand_top)
    if labels is not None:
        if labels.size != ref_top.size:
            if primary:
                raise CalibrationError(
                    f"{labels.size} labels for {ref_top.size} predictions of output '{name}'",
                    hint="give one label per sample (per row of a batched sample, in order)",
                )
            return metrics
        metrics.accuracy = _percent(cand_top == labels)
        metrics.reference_accuracy = _percent(ref_top == labels)
        metrics.accuracy_drop = metrics.reference_accuracy - metrics.accuracy
    return metrics


def compare_outputs(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    labels: np.ndarray | None = None,
    output_names: list[str] | None = None,
    reference_name: str = "",
    tasks: list[Any] | None = None,
    temperatures: dict[str, float] | None = None,
) -> AccuracyReport:
    """Compare a candidate's outputs with the reference's, sample by sample.

    Args:
        reference: per sample, the reference outputs by name.
        candidate: per sample, the candidate outputs under the same names.
        labels: one integer label per sample (per row, in order, for batched samples), or None.
        output_names: the outputs to compare, in order; default: all of the first reference sample's.
        reference_name: what the reference is, recorded in the report.
        tasks: each output's ``OutputTask`` (from the build's manifest); default: inferred from the outputs'
            shapes. Every output is also scored in its task's terms (``edgec.benchmarks.metrics``).
        temperatures: output -> the temperature the build fitted (--calibrate-confidence); with labels, the
            classification figures add the ECE after it (``ece_calibrated``).
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate samples")
    if not reference:
        raise CalibrationError("no evaluation samples to compare", hint="give at least one evaluation sample")
    names = list(output_names) if output_names is not None else list(reference[0])
    for i, (r, c) in enumerate(zip(reference, candidate)):
        for name in names:
            if name not in r or name not in c:
                where = "reference" if name not in r else "candidate"
                raise CalibrationError(f"sample {i} of the {where} has no output '{name}'")
    label_arr = None if labels is None else np.asarray(labels).astype(np.int64).ravel()
    per_output: dict[str, OutputMetrics] = {}
    seen_classification = False
    by_name = _tasks_of(reference, names, label_arr, tasks)
    for name in names:
        ref = [np.asarray(r[name]) for r in reference]
        cand = [np.asarray(c[name]) for c in candidate]
        # top-1 agreement of the last axis' argmax: for classifiers and outputs of no known task, not for a
        # probability map, a sequence, boxes or an embedding, whose argmax along a row means nothing
        rows = by_name[name].task in ("classification", GENERIC)
        is_primary = rows and not seen_classification and _is_classification(ref[0])
        per_output[name] = _compare_one(name, ref, cand, label_arr, is_primary, rows)
        seen_classification = seen_classification or per_output[name].classification
    scored = _task_metrics(reference, candidate, names, label_arr, by_name)
    for name, temperature in (temperatures or {}).items():
        m = scored.get(name)
        if m is not None and m.task == "classification" and "ece" in m.figures:
            from edgec.benchmarks.metrics import ece_at_temperature

            task = next(t for t in tasks or () if t.output == name) if tasks else None
            if task is not None:
                m.figures["temperature"] = float(temperature)
                m.figures["ece_calibrated"] = ece_at_temperature(task, [c[name] for c in candidate], label_arr,
                                                                 temperature)
    return AccuracyReport(per_output=per_output, samples=len(reference), reference=reference_name, tasks=scored)


def _tasks_of(reference: list[dict[str, np.ndarray]], names: list[str], labels: np.ndarray | None,
              tasks: list[Any] | None) -> dict[str, Any]:
    """Each output's task: given (the build's manifest), else inferred from the reference outputs' shapes."""
    from edgec.compiler.tasks import resolve_tasks
    from edgec.compiler.types import InputSpec, TensorSpec

    by_name = {t.output: t for t in tasks or ()}
    if not all(n in by_name for n in names):
        first = reference[0]
        spec = InputSpec((), tuple(TensorSpec(n, np.asarray(first[n]).shape, np.asarray(first[n]).dtype.name)
                                   for n in names))
        inferred = {t.output: t for t in resolve_tasks(spec, has_labels=labels is not None)}
        by_name = {n: by_name.get(n, inferred[n]) for n in names}
    return by_name


def _task_metrics(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]], names: list[str],
                  labels: np.ndarray | None, by_name: dict[str, Any]) -> dict[str, Any]:
    """Each output in its task's terms (``by_name``: its task); labels go to the first classification output."""
    from edgec.benchmarks.metrics import task_metrics

    labelled = next((n for n in names if by_name[n].task == "classification"), None)
    return {
        n: task_metrics(by_name[n], [r[n] for r in reference], [c[n] for c in candidate],
                        labels if n == labelled else None)
        for n in names
    }
