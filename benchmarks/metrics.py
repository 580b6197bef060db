"""Task metrics: how far a candidate's output is from the reference's, in the terms of the output's task.

``task_metrics(task, reference, candidate, labels)`` scores one output over an evaluation set (one array per
sample, each with a leading batch axis) and returns a ``TaskMetrics``: a headline figure, a ``drop`` for gating,
every other figure, per-class figures and the data the HTML report plots.

Units: agreements and accuracies are percentages (0-100, as in ``accuracy.py``); IoU, cosine, F1, ROC-AUC, mAP,
R², ECE and token error rates are fractions (0-1). ``drop`` is always in points, 0 for a perfect candidate and
larger when worse, so one ``--max-accuracy-drop`` budget reads the same for every task:

==============  ======================================  ================================================
task            with labels (``drop_basis="labels"``)   without (``drop_basis="reference"``)
==============  ======================================  ================================================
classification  reference - candidate accuracy          100 - top-1 agreement %
multilabel      100 x (reference - candidate macro F1)  100 - per-label agreement % at the threshold
regression      100 x (reference - candidate R²)        100 x (1 - R² of candidate vs reference)
embedding       reference - candidate 1-NN accuracy     100 x (1 - mean row cosine)
detection       100 x (reference - candidate mAP@0.5)   100 x (1 - detection quality): F1 of the boxes
                                                        matched (IoU >= 0.5, same class) x their mean IoU
dense           100 x (reference - candidate (m)IoU)    100 - pixel agreement % (exclusive maps) or
                                                        100 x (1 - IoU) of the thresholded maps
sequence        100 x (candidate - reference TER)       100 x token error rate vs the reference
generic         -                                       100 x (1 - cosine)
==============  ======================================  ================================================

Detection quality is the panoptic-quality product (recognition x localisation): a candidate that loses or
adds boxes and one whose boxes drift both lower it, where matched IoU alone ignores the lost boxes and box
agreement alone ignores the drift.

The embedding drop without labels is the cosine, not nearest-neighbour agreement: on the few dozen rows of an
evaluation set one near-tie flipping moves NN agreement by several points, while the cosine moves smoothly with
the error. NN agreement is reported beside it.

Non-finite values (a broken kernel's NaN/inf) are counted in ``figures["nonfinite_values"]`` and replaced by 0 /
+-1e30 before the task figures, so they count as errors instead of poisoning every figure.

scikit-learn and scipy are imported where used (``pip install 'edgec[samples]'`` installs both).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgec.benchmarks import postprocess as pp
from edgec.benchmarks.accuracy import _cosine, _snr_db
from edgec.compiler.errors import CalibrationError, ConfigError, missing_dependency
from edgec.compiler.tasks import GENERIC, OutputTask, class_axis, detection_layout, grid_levels, sequence_axes

#: Fixed detection decoding (the usual YOLO evaluation settings), so reference and candidate decode alike.
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_BOXES = 300
MATCH_IOU = 0.5
ECE_BINS = 15
#: Non-finite values are replaced by +-this before the task figures.
_BIG = 1e30


@dataclasses.dataclass
class TaskMetrics:
    """One output's figures against the reference (and the labels, when given)."""

    output: str
    task: str
    headline: str  # the name of the headline figure, a key of ``figures``
    value: float
    higher_is_better: bool
    drop: float  # points, 0 = as good as the reference; see the module docstring
    drop_basis: str  # "labels" or "reference"
    rows: int  # what was scored: batch rows, images, sequences
    figures: dict[str, float]
    per_class: dict[str, dict[str, float]] | None = None
    plots: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # figure -> why it was not computed

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _sklearn() -> Any:
    try:
        import sklearn.metrics
    except ImportError:
        raise missing_dependency("scikit-learn", "samples", "Task metrics (precision, recall, ROC-AUC)") from None
    return sklearn.metrics


def _scipy_optimize() -> Any:
    try:
        import scipy.optimize
    except ImportError:
        raise missing_dependency("scipy", "samples", "Task metrics (box matching, temperature fitting)") from None
    return scipy.optimize


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def task_metrics(
    task: OutputTask, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], labels: Any = None
) -> TaskMetrics:
    """Score ``candidate`` against ``reference`` (one array per sample, leading batch axis) for ``task``.

    ``labels``, optional, per task: classification: one class id per row; multilabel: ``[rows, L]`` 0/1;
    regression: targets shaped like the output; embedding: one class id per row (1-NN accuracy); detection: per
    image a ``(boxes [k, 4] xyxy, classes [k])`` pair; dense: per row a mask (class ids for exclusive maps, 0/1
    otherwise); sequence: per row a token-id sequence.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate samples")
    if not len(reference):
        raise CalibrationError(f"no evaluation samples to score output '{task.output}'",
                               hint="give at least one evaluation sample")
    ref, cand, nonfinite = [], [], 0
    for i, (r, c) in enumerate(zip(reference, candidate)):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape:
            raise CalibrationError(
                f"output '{task.output}' of sample {i} has shape {c.shape}, the reference's has {r.shape}",
                hint="the artifact and the reference must be the same model with the same inputs",
            )
        if r.ndim == 0:
            r, c = r.reshape(1), c.reshape(1)
        r, c = r.astype(np.float64), c.astype(np.float64)
        bad = ~np.isfinite(r) | ~np.isfinite(c)
        nonfinite += int(np.count_nonzero(bad))
        ref.append(np.nan_to_num(r, nan=0.0, posinf=_BIG, neginf=-_BIG))
        cand.append(np.nan_to_num(c, nan=0.0, posinf=_BIG, neginf=-_BIG))
    result = _SCORERS[task.task](task, ref, cand, labels)
    r_all = np.concatenate([a.ravel() for a in ref])
    c_all = np.concatenate([a.ravel() for a in cand])
    diff = np.abs(r_all - c_all)
    generic = {
        "cosine": _cosine(r_all, c_all),
        "snr_db": _snr_db(float(np.sum(r_all * r_all)), float(np.sum(diff * diff))),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "nonfinite_values": float(nonfinite),
    }
    result.figures = {**generic, **result.figures}
    if task.task == GENERIC:
        result.value = result.figures["cosine"]
        result.drop = 100.0 * (1.0 - result.value)
    return result


#: The figure a task's drop against the reference comes from, where it is not the headline: detection's matched
#: IoU ignores lost boxes, its detection quality (recognition x localisation) counts them.
DROP_FIGURE = {"detection": "detection_quality"}


def _metrics(task: OutputTask, headline: str, higher: bool, drop: float, basis: str, rows: int,
             figures: dict[str, float], **extra: Any) -> TaskMetrics:
    return TaskMetrics(task.output, task.task, headline, float(figures.get(headline, math.nan)), higher,
                       float(drop), basis, int(rows), figures, **extra)


def _percent(hits: np.ndarray) -> float:
    return float(np.mean(hits) * 100.0) if np.size(hits) else 100.0


def _rows(task: OutputTask, arrays: list[np.ndarray]) -> np.ndarray:
    """``[rows, C]``: the class/feature axis last, every other position a row."""
    out = []
    for a in arrays:
        axis = class_axis(task, a.shape)
        out.append(np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]))
    return np.concatenate(out)


def _flat_labels(labels: Any) -> np.ndarray:
    if isinstance(labels, (list, tuple)):
        return np.concatenate([np.ravel(np.asarray(x)) for x in labels]) if labels else np.zeros(0)
    return np.ravel(np.asarray(labels))


def _check_count(task: OutputTask, got: int, want: int, what: str) -> None:
    if got != want:
        raise CalibrationError(f"{got} labels for the {want} {what} of output '{task.output}'",
                               hint=f"give one label per {what.removesuffix('s')}, in order")


def _int_labels(task: OutputTask, labels: Any, rows: int, classes: int) -> np.ndarray:
    y = _flat_labels(labels)
    _check_count(task, y.size, rows, "rows")
    if y.size and (not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= classes):
        raise CalibrationError(f"labels of output '{task.output}' must be class ids 0..{classes - 1}",
                               hint="give integer class ids, one per row")
    return y.astype(np.int64)


def _probabilities(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Rows of class probabilities: softmax of logits, or the given probabilities renormalised."""
    if not probabilities:
        return pp.softmax(x, axis=-1)
    p = np.clip(x, 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / x.shape[1])


# ---------------------------------------------------------------------------------------------------------------
# Classification and calibration


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[float, dict[str, list]]:
    """Expected calibration error of ``[n, C]`` probabilities (or ``[n]`` probabilities of class 1).

    Confidence is the top probability; ``bins`` equal-width bins over (0, 1]. Returns the ECE and the
    reliability diagram: bin edges, counts, mean confidence and accuracy per bin (None for empty bins).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    y = np.asarray(labels).ravel().astype(np.int64)
    if len(p) != y.size:
        raise ValueError(f"{len(p)} probability rows but {y.size} labels")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bins are (lo, hi]; the tolerance keeps 0.7 * 10 = 7.000000000000001 in (0.6, 0.7]
    idx = np.clip(np.ceil(conf * bins - 1e-9).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    value = float(np.sum(np.abs(acc_sum - conf_sum)) / max(len(p), 1))
    safe = np.where(count > 0, count, 1)
    data = {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "count": count.tolist(),
        "confidence": [float(v) if n else None for v, n in zip(conf_sum / safe, count)],
        "accuracy": [float(v) if n else None for v, n in zip(acc_sum / safe, count)],
    }
    return value, data


def fit_temperature(logits_or_probs: np.ndarray, labels: np.ndarray, probabilities: bool, axis: int = -1,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` on these rows.

    Fit it on a held-out split, not on the rows you then report the calibration of. For probabilities the
    logits are ``log(p)``, as ``postprocess.apply_temperature`` takes them.
    """
    opt = _scipy_optimize()
    x = np.asarray(logits_or_probs, dtype=np.float64)
    x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    y = np.asarray(labels).ravel().astype(np.int64)
    if len(x) != y.size:
        raise ValueError(f"{len(x)} rows but {y.size} labels")
    z = np.log(np.clip(x, pp.EPS, None)) if probabilities else x
    rows = np.arange(len(z))

    def nll(log_t: float) -> float:
        return float(-np.mean(pp.log_softmax(z / math.exp(log_t), axis=-1)[rows, y]))

    res = opt.minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                              options={"xatol": 1e-5})
    return float(math.exp(res.x))


def _classification(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    skm = _sklearn()
    r, c = _rows(task, ref), _rows(task, cand)
    n, classes = r.shape
    if classes < 2:
        raise ConfigError(f"output '{task.output}' has {classes} class on its class axis",
                          hint=f"a single score is binary: declare {task.output}=multilabel")
    probs = task.option("probabilities")
    pr, pc = _probabilities(r, probs), _probabilities(c, probs)
    top_r, top_c = pr.argmax(axis=1), pc.argmax(axis=1)
    fig: dict[str, float] = {"top1_agreement": _percent(top_r == top_c),
                             "max_probability_error": float(np.max(np.abs(pr - pc)))}
    skipped: dict[str, str] = {}
    plots: dict[str, Any] = {}
    if classes > 5:
        top5 = np.argpartition(-pc, 5, axis=1)[:, :5]
        fig["top5_agreement"] = _percent((top5 == top_r[:, None]).any(axis=1))
    else:
        skipped["top5_agreement"] = f"only {classes} classes"
    y = None if labels is None else _int_labels(task, labels, n, classes)
    truth, basis = (y, "labels") if y is not None else (top_r, "reference")
    present = np.unique(np.concatenate([truth, top_c]))
    prec, rec, f1, support = skm.precision_recall_fscore_support(truth, top_c, labels=present, zero_division=0)
    fig.update(precision_macro=float(prec.mean()), recall_macro=float(rec.mean()), f1_macro=float(f1.mean()))
    per_class = {str(k): {"precision": float(p), "recall": float(q), "f1": float(f), "support": float(s)}
                 for k, p, q, f, s in zip(present, prec, rec, f1, support)}
    missing = sorted(set(range(classes)) - set(np.unique(truth).tolist()))
    if missing:
        skipped["roc_auc"] = (f"class(es) {', '.join(map(str, missing[:10]))} have no rows in the "
                              f"{'labels' if y is not None else 'reference predictions'}")
    else:
        def auc(p: np.ndarray) -> float:
            if classes == 2:
                return float(skm.roc_auc_score(truth, p[:, 1]))
            return float(skm.roc_auc_score(truth, p, multi_class="ovr", labels=list(range(classes))))

        fig["roc_auc"] = auc(pc)
        if y is not None:
            fig["reference_roc_auc"] = auc(pr)
        if classes == 2:
            precision, recall, _ = skm.precision_recall_curve(truth, pc[:, 1])
            step = max(1, len(precision) // 100)
            plots["pr_curve"] = {"basis": basis, "precision": precision[::step].tolist(),
                                 "recall": recall[::step].tolist()}
    if y is None:
        skipped["ece"] = "calibration needs labels"
        return _metrics(task, "top1_agreement", True, 100.0 - fig["top1_agreement"], "reference", n, fig,
                        per_class=per_class, plots=plots, skipped=skipped)
    fig["accuracy"] = _percent(top_c == y)
    fig["reference_accuracy"] = _percent(top_r == y)
    fig["f1_macro_reference"] = float(skm.f1_score(y, top_r, labels=present, average="macro", zero_division=0))
    fig["ece"], cand_bins = ece(pc, y)
    fig["reference_ece"], ref_bins = ece(pr, y)
    fig["ece_change"] = fig["ece"] - fig["reference_ece"]
    plots["reliability"] = {"reference": ref_bins, "candidate": cand_bins}
    return _metrics(task, "accuracy", True, fig["reference_accuracy"] - fig["accuracy"], "labels", n, fig,
                    per_class=per_class, plots=plots, skipped=skipped)


def _multilabel(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    skm = _sklearn()
    r, c = _rows(task, ref), _rows(task, cand)
    n, width = r.shape
    if not task.option("probabilities"):
        r, c = pp.sigmoid(r), pp.sigmoid(c)
    thr = task.option("threshold")
    on_r, on_c = r >= thr, c >= thr
    fig = {"label_agreement": _percent(on_r == on_c), "row_agreement": _percent((on_r == on_c).all(axis=1)),
           "max_probability_error": float(np.max(np.abs(r - c)))}
    y = None
    if labels is not None:
        y = _flat_labels(labels)
        _check_count(task, y.size, n * width, "label values (rows x labels)")
        y = y.reshape(n, width).astype(bool)
    truth = y if y is not None else on_r
    per_class: dict[str, dict[str, float]] = {}
    f1_c, f1_r, aucs, single = [], [], [], []
    for j in range(width):
        entry = {"agreement": _percent(on_r[:, j] == on_c[:, j])}
        entry["f1"] = float(skm.f1_score(truth[:, j], on_c[:, j], zero_division=0))
        f1_c.append(entry["f1"])
        if y is not None:
            f1_r.append(float(skm.f1_score(y[:, j], on_r[:, j], zero_division=0)))
        if truth[:, j].all() or not truth[:, j].any():
            single.append(j)
        else:
            entry["roc_auc"] = float(skm.roc_auc_score(truth[:, j], c[:, j]))
            aucs.append(entry["roc_auc"])
        per_class[str(j)] = entry
    fig["f1_macro"] = float(np.mean(f1_c))
    skipped = {}
    if aucs:
        fig["roc_auc"] = float(np.mean(aucs))
    if single:
        skipped["roc_auc"] = f"{len(single)} of {width} labels have one class only in the truth; left out"
    if y is None:
        return _metrics(task, "label_agreement", True, 100.0 - fig["label_agreement"], "reference", n, fig,
                        per_class=per_class, skipped=skipped)
    fig["f1_macro_reference"] = float(np.mean(f1_r))
    return _metrics(task, "f1_macro", True, 100.0 * (fig["f1_macro_reference"] - fig["f1_macro"]), "labels", n,
                    fig, per_class=per_class, skipped=skipped)


# ---------------------------------------------------------------------------------------------------------------
# Regression and embeddings


def _regression(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    skm = _sklearn()
    r = np.concatenate([a.ravel() for a in ref])
    c = np.concatenate([a.ravel() for a in cand])
    rows = sum(a.shape[0] if a.ndim > 1 else 1 for a in ref)
    fig = {"mae": float(skm.mean_absolute_error(r, c)), "rmse": float(skm.root_mean_squared_error(r, c)),
           "r2": float(skm.r2_score(r, c))}
    if labels is None:
        return _metrics(task, "r2", True, 100.0 * (1.0 - fig["r2"]), "reference", rows, fig)
    y = _flat_labels(labels).astype(np.float64)
    _check_count(task, y.size, r.size, "values")
    fig.update(r2_vs_labels=float(skm.r2_score(y, c)), reference_r2_vs_labels=float(skm.r2_score(y, r)),
               mae_vs_labels=float(skm.mean_absolute_error(y, c)),
               reference_mae_vs_labels=float(skm.mean_absolute_error(y, r)))
    return _metrics(task, "r2_vs_labels", True, 100.0 * (fig["reference_r2_vs_labels"] - fig["r2_vs_labels"]),
                    "labels", rows, fig)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def nearest_neighbours(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """``[n, k]``: for each row, the other rows by decreasing cosine similarity (ties to the lower index)."""
    u = _unit_rows(np.asarray(x, dtype=np.float64))
    n = len(u)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        sim = u[start:start + chunk] @ u.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        out[start:start + chunk] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


def _embedding(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    r, c = _rows(task, ref), _rows(task, cand)
    n = len(r)
    cos = np.sum(_unit_rows(r) * _unit_rows(c), axis=1)
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(c, axis=1) == 0)
    cos = np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)
    fig = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    edges = np.linspace(min(float(cos.min()), 0.99), 1.0, 21)
    plots: dict[str, Any] = {"cosine_histogram": {"edges": edges.tolist(),
                                                  "counts": np.histogram(cos, bins=edges)[0].tolist()}}
    skipped = {}
    y = None if labels is None else _flat_labels(labels)
    if y is not None:
        _check_count(task, y.size, n, "rows")
    if n < 3:
        skipped["nn_agreement"] = f"needs at least 3 rows, got {n}"
    else:
        k = min(5, n - 1)
        nn_r, nn_c = nearest_neighbours(r, k), nearest_neighbours(c, k)
        fig["nn_agreement"] = _percent(nn_r[:, 0] == nn_c[:, 0])
        fig[f"nn_recall_at_{k}"] = _percent((nn_c == nn_r[:, :1]).any(axis=1))
        plots["nearest_neighbours"] = {"agreement": fig["nn_agreement"], "k": k,
                                       "recall_at_k": fig[f"nn_recall_at_{k}"]}
        if y is not None:
            fig["knn_accuracy"] = _percent(y[nn_c[:, 0]] == y)
            fig["reference_knn_accuracy"] = _percent(y[nn_r[:, 0]] == y)
            return _metrics(task, "mean_cosine", True, fig["reference_knn_accuracy"] - fig["knn_accuracy"],
                            "labels", n, fig, plots=plots, skipped=skipped)
    if y is not None:
        skipped["knn_accuracy"] = skipped["nn_agreement"]
    return _metrics(task, "mean_cosine", True, 100.0 * (1.0 - fig["mean_cosine"]), "reference", n, fig,
                    plots=plots, skipped=skipped)


# ---------------------------------------------------------------------------------------------------------------
# Detection


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point average precision: the area under the precision envelope over recall."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def mean_average_precision(
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = MATCH_IOU,
) -> tuple[float, dict[int, float]]:
    """mAP over the classes that have ground truth, VOC style (greedy by score, all-point AP).

    Args:
        detections: per image ``(boxes [k, 4] xyxy, scores [k], classes [k])``.
        ground_truth: per image ``(boxes [m, 4] xyxy, classes [m])``.
    Returns: (mAP, AP per class); mAP is NaN when there is no ground truth at all.
    """
    gt_classes = sorted({int(k) for _, cls in ground_truth for k in np.ravel(cls)})
    aps: dict[int, float] = {}
    for k in gt_classes:
        gts = [np.asarray(b, np.float64).reshape(-1, 4)[np.ravel(cls) == k] for b, cls in ground_truth]
        n_gt = sum(len(g) for g in gts)
        found = [(float(s), img, box) for img, (boxes, scores, cls) in enumerate(detections)
                 for box, s, ck in zip(boxes, scores, cls) if int(ck) == k]
        found.sort(key=lambda t: -t[0])
        used = [np.zeros(len(g), dtype=bool) for g in gts]
        tp = np.zeros(len(found))
        for i, (_, img, box) in enumerate(found):
            if len(gts[img]):
                ious = pp.box_iou(box[None], gts[img])[0]
                j = int(np.argmax(ious))
                if ious[j] >= iou_threshold and not used[img][j]:
                    used[img][j] = True
                    tp[i] = 1.0
        ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
        aps[k] = voc_ap(ctp / n_gt, ctp / np.maximum(ctp + cfp, 1e-12)) if len(found) else 0.0
    return (float(np.mean(list(aps.values()))) if aps else math.nan), aps


def _images(task: OutputTask, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Each batch row of each sample as ``[anchors, channels]``, grid-decoded when the task says so."""
    out = []
    for a in arrays:
        lay = detection_layout(task, a.shape)
        rows = [np.moveaxis(a[b], lay.anchor_axis - 1, 0) for b in range(a.shape[0])]
        if task.opts["grid"] is not None:
            levels = grid_levels(task, a.shape[lay.anchor_axis])
            rows = [pp.grid_decode(r, lay.boxes, levels) for r in rows]
        out.extend(rows)
    return out


def _detection(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    opt = _scipy_optimize()
    o = task.opts
    lay = detection_layout(task, ref[0].shape)
    decode = {"boxes": lay.boxes, "scores": lay.scores, "layout": o["layout"], "objectness": lay.objectness,
              "probabilities": o["probabilities"], "score_threshold": SCORE_THRESHOLD, "iou_threshold": NMS_IOU,
              "max_boxes": MAX_BOXES}
    raw_err_max, raw_err_sum, raw_count = 0.0, 0.0, 0
    ref_dets, cand_dets = [], []
    ious, score_errs, box_errs, best_ious = [], [], [], []
    n_ref = n_cand = 0
    for r, c in zip(_images(task, ref), _images(task, cand)):
        err = np.abs(pp.class_probabilities(r, lay.scores, lay.objectness, o["probabilities"])
                     - pp.class_probabilities(c, lay.scores, lay.objectness, o["probabilities"]))
        if err.size:
            raw_err_max = max(raw_err_max, float(err.max()))
            raw_err_sum += float(err.sum())
            raw_count += err.size
        dr, dc = pp.decode_detections(r, **decode), pp.decode_detections(c, **decode)
        ref_dets.append(dr)
        cand_dets.append(dc)
        n_ref += len(dr[0])
        n_cand += len(dc[0])
        if not len(dr[0]):
            continue
        iou = pp.box_iou(dr[0], dc[0])
        same = dr[2][:, None] == dc[2][None, :]
        best_ious.extend(np.where(same, iou, 0.0).max(axis=1) if len(dc[0]) else np.zeros(len(dr[0])))
        valid = same & (iou >= MATCH_IOU)
        if not valid.any():
            continue
        rows, cols = opt.linear_sum_assignment(np.where(valid, -iou, 0.0))
        keep = valid[rows, cols]
        rows, cols = rows[keep], cols[keep]
        ious.extend(iou[rows, cols])
        score_errs.extend(np.abs(dr[1][rows] - dc[1][cols]))
        box_errs.extend(np.abs(dr[0][rows] - dc[0][cols]).mean(axis=1))
    matched = len(ious)
    fig = {
        "reference_boxes": float(n_ref), "candidate_boxes": float(n_cand), "matched_boxes": float(matched),
        "missed_boxes": float(n_ref - matched), "extra_boxes": float(n_cand - matched),
        "box_agreement": 100.0 * 2 * matched / (n_ref + n_cand) if n_ref + n_cand else 100.0,
        "max_score_error": raw_err_max, "mean_score_error": raw_err_sum / max(raw_count, 1),
    }
    fig["detection_quality"] = 2 * float(np.sum(ious)) / (n_ref + n_cand) if n_ref + n_cand else 1.0
    skipped = {}
    if matched:
        fig.update(matched_iou=float(np.mean(ious)), matched_score_error=float(np.mean(score_errs)),
                   matched_box_error=float(np.mean(box_errs)))
    elif n_ref + n_cand == 0:
        fig["matched_iou"] = 1.0
        skipped["matched_score_error"] = f"no boxes above score {SCORE_THRESHOLD} in either output"
    else:
        fig["matched_iou"] = 0.0
        skipped["matched_score_error"] = "no box of the candidate matches one of the reference"
    edges = np.linspace(0.0, 1.0, 21)
    plots = {"iou_histogram": {"edges": edges.tolist(), "counts": np.histogram(best_ious, bins=edges)[0].tolist(),
                               "of": "best same-class IoU of each reference box"}}
    images = len(ref_dets)
    if labels is None:
        return _metrics(task, "matched_iou", True, 100.0 * (1.0 - fig[DROP_FIGURE["detection"]]), "reference",
                        images, fig, plots=plots, skipped=skipped)
    gts = list(labels)
    _check_count(task, len(gts), images, "images")
    for i, gt in enumerate(gts):
        if len(gt) != 2 or np.asarray(gt[0]).reshape(-1, 4).shape[0] != np.ravel(gt[1]).size:
            raise CalibrationError(f"ground truth of image {i} for output '{task.output}' is not "
                                   "(boxes [k, 4], classes [k])", hint="give one (boxes xyxy, class ids) per image")
    cand_map, cand_ap = mean_average_precision(cand_dets, gts)
    ref_map, ref_ap = mean_average_precision(ref_dets, gts)
    if math.isnan(cand_map):
        skipped["map50"] = "the ground truth holds no boxes"
        return _metrics(task, "matched_iou", True, 100.0 * (1.0 - fig[DROP_FIGURE["detection"]]), "reference",
                        images, fig, plots=plots, skipped=skipped)
    fig.update(map50=cand_map, reference_map50=ref_map)
    per_class = {str(k): {"ap50": cand_ap[k], "reference_ap50": ref_ap[k]} for k in cand_ap}
    return _metrics(task, "map50", True, 100.0 * (ref_map - cand_map), "labels", images, fig,
                    per_class=per_class, plots=plots, skipped=skipped)


# ---------------------------------------------------------------------------------------------------------------
# Dense maps and sequences


def _class_iou(a: np.ndarray, b: np.ndarray, classes: int) -> dict[int, float]:
    """IoU per class of two class-id maps, for the classes present in either."""
    cm = np.bincount(a * classes + b, minlength=classes * classes).reshape(classes, classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    return {k: float(inter[k] / union[k]) for k in range(classes) if union[k] > 0}


def _binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _dense(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    o = task.opts
    rows = sum(a.shape[0] for a in ref)
    axis = class_axis(task, ref[0].shape)
    channels = ref[0].shape[axis] if axis is not None else 1
    y = None if labels is None else _flat_labels(labels)
    if o["exclusive"] and axis is not None and channels > 1:
        r, c = _rows(task, ref), _rows(task, cand)
        pr = r if o["probabilities"] else pp.softmax(r, axis=-1)
        pc = c if o["probabilities"] else pp.softmax(c, axis=-1)
        ar, ac = r.argmax(axis=1), c.argmax(axis=1)
        per = _class_iou(ar, ac, channels)
        fig = {"pixel_agreement": _percent(ar == ac), "miou_vs_reference": float(np.mean(list(per.values()))),
               "mean_probability_error": float(np.mean(np.abs(pr - pc)))}
        per_class = {str(k): {"iou_vs_reference": v} for k, v in per.items()}
        if y is None:
            return _metrics(task, "pixel_agreement", True, 100.0 - fig["pixel_agreement"], "reference", rows, fig,
                            per_class=per_class)
        _check_count(task, y.size, ar.size, "pixels")
        y = y.astype(np.int64)
        if y.min() < 0 or y.max() >= channels:
            raise CalibrationError(f"mask labels of output '{task.output}' must be class ids 0..{channels - 1}")
        cand_iou, ref_iou = _class_iou(y, ac, channels), _class_iou(y, ar, channels)
        fig.update(miou=float(np.mean(list(cand_iou.values()))), reference_miou=float(np.mean(list(ref_iou.values()))),
                   pixel_accuracy=_percent(ac == y), reference_pixel_accuracy=_percent(ar == y))
        for k, v in cand_iou.items():
            per_class.setdefault(str(k), {}).update(iou=v, reference_iou=ref_iou.get(k, 0.0))
        return _metrics(task, "miou", True, 100.0 * (fig["reference_miou"] - fig["miou"]), "labels", rows, fig,
                        per_class=per_class)
    # independent maps: every value thresholded on its own, in the output's own layout (as the labels are)
    r = np.concatenate([a.ravel() for a in ref])
    c = np.concatenate([a.ravel() for a in cand])
    if not o["probabilities"]:
        r, c = pp.sigmoid(r), pp.sigmoid(c)
    on_r, on_c = r >= o["threshold"], c >= o["threshold"]
    fig = {"iou": _binary_iou(on_r, on_c), "pixel_agreement": _percent(on_r == on_c),
           "mean_probability_error": float(np.mean(np.abs(r - c)))}
    per_class = None
    if axis is not None and channels > 1:
        ch_r, ch_c = _rows(task, ref), _rows(task, cand)
        if not o["probabilities"]:
            ch_r, ch_c = pp.sigmoid(ch_r), pp.sigmoid(ch_c)
        ch_r, ch_c = ch_r >= o["threshold"], ch_c >= o["threshold"]
        per_class = {str(k): {"iou_vs_reference": _binary_iou(ch_r[:, k], ch_c[:, k])} for k in range(channels)}
    if y is None:
        return _metrics(task, "iou", True, 100.0 * (1.0 - fig["iou"]), "reference", rows, fig, per_class=per_class)
    _check_count(task, y.size, on_r.size, "mask values")
    y = y > 0
    fig.update(iou_vs_labels=_binary_iou(y, on_c), reference_iou_vs_labels=_binary_iou(y, on_r))
    return _metrics(task, "iou_vs_labels", True, 100.0 * (fig["reference_iou_vs_labels"] - fig["iou_vs_labels"]),
                    "labels", rows, fig, per_class=per_class)


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning ``a`` into ``b``."""
    a, b = list(a), list(b)
    if a == b:
        return 0
    if not a or not b:
        return max(len(a), len(b))
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, z in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != z))
        prev = cur
    return prev[-1]


def _decode_sequences(task: OutputTask, arrays: list[np.ndarray]) -> list[list[int]]:
    collapse = task.option("decode") == "ctc"
    out = []
    for a in arrays:
        time, cls = sequence_axes(task, a.shape)
        if a.ndim == 2:
            batch = [a]
        else:  # the batch axis is the one neither time nor class: 0, or 1 in a time-major [T, N, C]
            axis = ({0, 1, 2} - {time, cls}).pop()
            batch = [np.take(a, b, axis=axis) for b in range(a.shape[axis])]
            time, cls = time - (time > axis), cls - (cls > axis)
        for x in batch:
            frames = np.moveaxis(x, [time, cls], [0, 1])
            out.append(pp.ctc_greedy_decode(frames, task.option("blank"), collapse=collapse))
    return out


def _sequence(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    rs, cs = _decode_sequences(task, ref), _decode_sequences(task, cand)
    n = len(rs)
    dists = [edit_distance(r, c) for r, c in zip(rs, cs)]
    fig = {"sequence_agreement": _percent(np.array([r == c for r, c in zip(rs, cs)])),
           "token_error_rate": sum(dists) / max(sum(len(r) for r in rs), 1)}
    counts = np.bincount(np.minimum(dists, 10), minlength=11)
    plots = {"edit_distances": {"distance": list(range(11)), "count": counts.tolist(), "last_is_10_or_more": True}}
    if labels is None:
        return _metrics(task, "token_error_rate", False, 100.0 * fig["token_error_rate"], "reference", n, fig,
                        plots=plots)
    ys = [[int(t) for t in np.ravel(np.asarray(s))] for s in labels]
    _check_count(task, len(ys), n, "sequences")
    total = max(sum(len(s) for s in ys), 1)
    fig.update(
        token_error_rate_vs_labels=sum(edit_distance(s, c) for s, c in zip(ys, cs)) / total,
        reference_token_error_rate_vs_labels=sum(edit_distance(s, r) for s, r in zip(ys, rs)) / total,
        sequence_accuracy=_percent(np.array([s == c for s, c in zip(ys, cs)])),
        reference_sequence_accuracy=_percent(np.array([s == r for s, r in zip(ys, rs)])),
    )
    drop = 100.0 * (fig["token_error_rate_vs_labels"] - fig["reference_token_error_rate_vs_labels"])
    return _metrics(task, "token_error_rate_vs_labels", False, drop, "labels", n, fig, plots=plots)


def _generic(task: OutputTask, ref: list, cand: list, labels: Any) -> TaskMetrics:
    # the figures themselves are the generic ones task_metrics adds to every task
    rows = sum(a.shape[0] if a.ndim > 1 else 1 for a in ref)
    return _metrics(task, "cosine", True, math.nan, "reference", rows, {})


_SCORERS = {
    "classification": _classification,
    "multilabel": _multilabel,
    "regression": _regression,
    "embedding": _embedding,
    "detection": _detection,
    "dense": _dense,
    "sequence": _sequence,
    GENERIC: _generic,
}


def confidence_calibration(
    task: OutputTask, fit: Sequence[np.ndarray], fit_labels: Any, held: Sequence[np.ndarray], held_labels: Any,
    reference_held: Sequence[np.ndarray],
) -> dict[str, float]:
    """Temperature scaling of one classification output: T fitted on ``fit`` (NLL, see ``fit_temperature``),
    judged on the ``held`` samples it never saw: the candidate's ECE before and after T, and the reference's."""
    probs = task.option("probabilities")
    rows = _rows(task, [np.asarray(a, np.float64) for a in fit])
    y = _int_labels(task, fit_labels, len(rows), rows.shape[1])
    temperature = fit_temperature(rows, y, probs)
    held_rows = _rows(task, [np.asarray(a, np.float64) for a in held])
    held_y = _int_labels(task, held_labels, len(held_rows), held_rows.shape[1])
    before, _ = ece(_probabilities(held_rows, probs), held_y)
    after, _ = ece(pp.apply_temperature(held_rows, temperature, probs, axis=-1), held_y)
    reference, _ = ece(_probabilities(_rows(task, [np.asarray(a, np.float64) for a in reference_held]), probs),
                       held_y)
    return {"temperature": float(temperature), "ece_before": float(before), "ece_after": float(after),
            "reference_ece": float(reference), "fit_rows": int(len(rows)), "held_rows": int(len(held_rows))}


def ece_at_temperature(task: OutputTask, candidate: Sequence[np.ndarray], labels: Any, temperature: float) -> float:
    """The ECE of a classification output after its temperature (what runners that apply T report)."""
    rows = _rows(task, [np.asarray(a, np.float64) for a in candidate])
    y = _int_labels(task, labels, len(rows), rows.shape[1])
    return ece(pp.apply_temperature(rows, temperature, task.option("probabilities"), axis=-1), y)[0]
