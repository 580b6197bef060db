"""Task metrics: each task's figures catch a planted degradation and pass a clean copy; calibration; decoding."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.benchmarks import postprocess as pp
from edgec.benchmarks.metrics import (
    SCORE_THRESHOLD,
    TaskMetrics,
    ece,
    edit_distance,
    fit_temperature,
    mean_average_precision,
    nearest_neighbours,
    task_metrics,
    voc_ap,
)
from edgec.compiler.errors import CalibrationError, ConfigError
from edgec.compiler.tasks import OutputTask, detection_layout
from usererrors import raises_user_error

sklearn = pytest.importorskip("sklearn", reason="task metrics need scikit-learn (pip install 'edgec[samples]')")
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def samples(rows: np.ndarray) -> list[np.ndarray]:
    """One array per sample with a leading batch axis of 1, as the harness collects them."""
    return [r[None] for r in rows]


def roundtrip(m: TaskMetrics) -> TaskMetrics:
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    back = TaskMetrics.from_dict(d)
    assert back.to_dict() == m.to_dict()
    return back


# ---------------------------------------------------------------------------------------------------------------
# postprocess.py: numpy only, shared with the device


def test_postprocess_imports_only_numpy_and_the_standard_library():
    path = Path(pp.__file__)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names - {"numpy", "__future__"} <= set(sys.stdlib_module_names), names
    code = (f"import runpy, sys; ns = runpy.run_path({str(path)!r}); ns['softmax']([[1.0, 2.0]]); "
            "print(sorted(m for m in ('edgec', 'sklearn', 'scipy', 'onnx', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_softmax_and_temperature():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 7)) * 5
    p = pp.softmax(z, axis=1)
    assert np.allclose(p.sum(axis=1), 1.0) and np.all(np.argmax(p, 1) == np.argmax(z, 1))
    assert np.allclose(pp.softmax(z.T, axis=0), p.T)
    assert np.allclose(pp.apply_temperature(z, 1.0, probabilities=False), p)
    for t in (0.5, 3.0):
        # probabilities and logits at the same temperature give the same distribution
        assert np.allclose(pp.apply_temperature(p, t, probabilities=True), pp.softmax(z / t, axis=1))
    assert pp.apply_temperature(z, 4.0, False).max() < p.max()  # softer
    with pytest.raises(ValueError):
        pp.apply_temperature(z, 0.0, False)


def test_nms_per_class_and_box_conversion():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert pp.nms(boxes, scores, 0.45).tolist() == [0, 2]
    # the same boxes, but the overlapping pair of different classes: both stay
    assert pp.nms(boxes, scores, 0.45, classes=np.array([0, 1, 0, 0])).tolist() == [0, 1, 2]
    assert pp.nms(boxes, scores, 0.45, max_boxes=1).tolist() == [0]
    assert np.allclose(pp.cxcywh_to_xyxy(np.array([[5, 5, 10, 4]])), [[0, 3, 10, 7]])
    iou = pp.box_iou(boxes[:1], boxes[1:2])[0, 0]
    assert math.isclose(iou, 81 / (100 + 100 - 81))


def test_ctc_greedy_decode_and_edit_distance():
    frames = np.eye(6)[[3, 3, 0, 5, 0, 5, 5, 1]]
    assert pp.ctc_greedy_decode(frames, blank=0) == [3, 5, 5, 1]
    assert pp.ctc_greedy_decode(frames, blank=0, collapse=False) == [3, 3, 0, 5, 0, 5, 5, 1]
    assert edit_distance(b"kitten", b"sitting") == 3
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([4, 5], [5, 4]) == edit_distance([5, 4], [4, 5]) == 2


# ---------------------------------------------------------------------------------------------------------------
# Classification on real data: a logistic regression on sklearn's digits


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16, y, test_size=0.5, random_state=0, stratify=y)
    clf = LogisticRegression(max_iter=3000).fit(x_tr, y_tr)
    return clf, x_te, y_te


CLS = OutputTask("logits", "classification")


def test_classification_clean_copy_passes(digits):
    clf, x, y = digits
    logits = clf.decision_function(x)
    noisy = logits + np.random.default_rng(0).normal(0, 1e-6, logits.shape)
    m = roundtrip(task_metrics(CLS, samples(logits), samples(noisy), labels=y))
    assert m.headline == "accuracy" and m.drop_basis == "labels"
    assert m.figures["top1_agreement"] == 100.0 and m.figures["top5_agreement"] == 100.0
    assert m.value == pytest.approx(100 * clf.score(x, y)) and m.drop == 0.0
    assert abs(m.figures["ece_change"]) < 1e-4 and m.figures["roc_auc"] > 0.99
    assert set(m.per_class) == {str(k) for k in range(10)}
    assert len(m.plots["reliability"]["candidate"]["count"]) == 15


def test_classification_catches_flipped_argmaxes(digits):
    clf, x, y = digits
    logits = clf.decision_function(x)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(logits), 40, replace=False)
    cand = logits.copy()
    top2 = np.argsort(-logits[flipped], axis=1)[:, :2]
    rows = np.arange(len(flipped))
    cand[flipped[:, None], top2] = cand[flipped[:, None], top2[:, ::-1]]  # swap first and second choice
    cand[flipped, top2[:, 1]] += 1e-3  # ties broken towards the swap
    assert np.count_nonzero(cand.argmax(1) != logits.argmax(1)) == 40 and rows.size == 40

    m = task_metrics(CLS, samples(logits), samples(cand))
    assert m.headline == "top1_agreement" and m.drop_basis == "reference"
    assert m.value == pytest.approx(100 * (1 - 40 / len(logits)))
    assert m.drop == pytest.approx(100 * 40 / len(logits))
    assert m.figures["top5_agreement"] == 100.0  # the reference's choice is still the candidate's second
    assert "ece" in m.skipped

    m = task_metrics(CLS, samples(logits), samples(cand), labels=y)
    ref_acc = 100 * np.mean(logits.argmax(1) == y)
    cand_acc = 100 * np.mean(cand.argmax(1) == y)
    assert m.figures["reference_accuracy"] == pytest.approx(ref_acc)
    assert m.drop == pytest.approx(ref_acc - cand_acc) and m.drop > 3


def test_classification_per_class_figures_find_the_damaged_class(digits):
    clf, x, y = digits
    logits = clf.decision_function(x)
    cand = logits.copy()
    cand[:, 3] = logits.min(axis=1) - 1.0  # class 3 is never predicted
    m = task_metrics(CLS, samples(logits), samples(cand), labels=y)
    recall = {k: v["recall"] for k, v in m.per_class.items()}
    assert recall["3"] == 0.0 and m.per_class["3"]["support"] == np.sum(y == 3)
    assert min(v for k, v in recall.items() if k != "3") > 0.85
    assert m.figures["roc_auc"] < m.figures["reference_roc_auc"]


def test_roc_auc_is_skipped_with_a_reason_when_a_class_is_missing(digits):
    clf, x, y = digits
    keep = y != 9
    probs = clf.predict_proba(x[keep])
    task = OutputTask("probs", "classification", {"probabilities": True})
    m = task_metrics(task, samples(probs), samples(probs), labels=y[keep])
    assert "roc_auc" not in m.figures and "9" in m.skipped["roc_auc"] and "labels" in m.skipped["roc_auc"]


def test_binary_classifier_has_roc_auc_and_a_pr_curve(digits):
    _, x, y = digits
    keep = y < 2
    clf = LogisticRegression(max_iter=3000).fit(x[keep][::2], y[keep][::2])
    probs = clf.predict_proba(x[keep])
    task = OutputTask("probs", "classification", {"probabilities": True})
    rng = np.random.default_rng(0)
    # a candidate that lost most of its signal: ranking gets worse
    bad = np.clip(0.5 + 0.1 * (probs - 0.5) + rng.normal(0, 0.2, probs.shape), 0, 1)
    good = task_metrics(task, samples(probs), samples(probs), labels=y[keep])
    worse = task_metrics(task, samples(probs), samples(bad), labels=y[keep])
    assert good.figures["roc_auc"] > 0.99 and worse.figures["roc_auc"] < good.figures["roc_auc"] - 0.05
    assert "top5_agreement" in good.skipped
    curve = good.plots["pr_curve"]
    assert curve["basis"] == "labels" and len(curve["precision"]) == len(curve["recall"]) > 2


# ---------------------------------------------------------------------------------------------------------------
# Calibration


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((20000, 5)) * 1.5
    p = pp.softmax(z, axis=1)
    y = (p.cumsum(axis=1) < rng.random((len(z), 1))).sum(axis=1)  # labels drawn from the calibrated model
    assert fit_temperature(4 * z, y, probabilities=False) == pytest.approx(4.0, rel=0.05)
    assert fit_temperature(pp.softmax(4 * z, axis=1), y, probabilities=True) == pytest.approx(4.0, rel=0.05)
    assert fit_temperature(z, y, probabilities=False) == pytest.approx(1.0, rel=0.05)


def test_temperature_fitted_on_a_held_out_split_lowers_ece():
    """A weak digits classifier (16 of the 64 pixels) made over-confident: logits x 4."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x[:, ::4] / 16, y, test_size=0.5, random_state=0, stratify=y)
    logits = 4 * LogisticRegression(max_iter=3000).fit(x_tr, y_tr).decision_function(x_te)
    calib, test = slice(0, 450), slice(450, None)
    t = fit_temperature(logits[calib], y_te[calib], probabilities=False)
    before, bins = ece(pp.softmax(logits[test], axis=1), y_te[test])
    after, _ = ece(pp.apply_temperature(logits[test], t, probabilities=False), y_te[test])
    assert 2.0 < t < 8.0
    assert before > 0.15 and after < before / 3
    assert sum(bins["count"]) == len(y_te[test]) and len(bins["edges"]) == 16
    # and task_metrics reports the over-confidence against a calibrated reference
    m = task_metrics(CLS, samples(logits[test] / t), samples(logits[test]), labels=y_te[test])
    assert m.figures["ece_change"] > 0.1 and m.figures["top1_agreement"] == 100.0


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    value, bins = ece(probs, labels, bins=10)
    # each row alone in its bin: (0.8, 0.9], (0.7, 0.8], (0.6, 0.7], (0.5, 0.6] (0.7 * 10 is 7.000000000000001)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert value == pytest.approx(expected)
    assert sum(bins["count"]) == 4 and bins["accuracy"][0] is None


# ---------------------------------------------------------------------------------------------------------------
# Multilabel, regression, embeddings


def test_multilabel_catches_one_flipped_label():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 5)) * 3
    task = OutputTask("tags", "multilabel")
    clean = task_metrics(task, samples(logits), samples(logits + rng.normal(0, 1e-6, logits.shape)))
    assert clean.figures["label_agreement"] == 100.0 and clean.drop == 0.0
    cand = logits.copy()
    rows = np.flatnonzero(np.abs(logits[:, 2]) < 2)[:30]
    cand[rows, 2] = -cand[rows, 2]
    m = task_metrics(task, samples(logits), samples(cand))
    assert m.per_class["2"]["agreement"] == pytest.approx(100 * (1 - len(rows) / 300))
    assert all(m.per_class[str(j)]["agreement"] == 100.0 for j in (0, 1, 3, 4))
    assert m.drop == pytest.approx(100 * len(rows) / 1500)
    labels = logits > 0
    with_labels = task_metrics(task, samples(logits), samples(cand), labels=labels)
    assert with_labels.figures["f1_macro_reference"] == 1.0 and with_labels.drop > 0


def test_regression_figures_follow_the_noise():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (500, 4))
    task = OutputTask("box", "regression")
    noisy = boxes + rng.normal(0, 2.0, boxes.shape)
    m = task_metrics(task, samples(boxes), samples(noisy))
    assert m.figures["mae"] == pytest.approx(2.0 * math.sqrt(2 / math.pi), rel=0.05)
    assert m.figures["rmse"] == pytest.approx(2.0, rel=0.05)
    assert 0.99 < m.figures["r2"] < 0.999 and m.drop == pytest.approx(100 * (1 - m.figures["r2"]))
    clean = task_metrics(task, samples(boxes), samples(boxes + 1e-6))
    assert clean.drop < 1e-6
    labels = boxes + rng.normal(0, 1.0, boxes.shape)
    m = task_metrics(task, samples(boxes), samples(noisy), labels=labels)
    assert m.headline == "r2_vs_labels" and m.figures["reference_r2_vs_labels"] > m.value and m.drop > 0


@pytest.fixture(scope="module")
def digit_embeddings():
    x, y = load_digits(return_X_y=True)
    x, y = x[:300], y[:300]
    x = x - x.mean(axis=0)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


EMB = OutputTask("emb", "embedding")


def test_embedding_noise_that_breaks_nearest_neighbours_is_caught(digit_embeddings):
    e, y = digit_embeddings
    rng = np.random.default_rng(0)
    clean = task_metrics(EMB, samples(e), samples(e + rng.normal(0, 1e-7, e.shape)), labels=y)
    assert clean.figures["nn_agreement"] == 100.0 and clean.figures["min_cosine"] > 0.9999
    assert clean.drop == 0.0 and clean.figures["reference_knn_accuracy"] > 90
    noisy = e + rng.normal(0, 0.1, e.shape)
    m = task_metrics(EMB, samples(e), samples(noisy))
    assert m.figures["nn_agreement"] < 60 and m.drop > 10
    assert m.figures["nn_recall_at_5"] >= m.figures["nn_agreement"]
    with_labels = task_metrics(EMB, samples(e), samples(noisy), labels=y)
    assert with_labels.drop_basis == "labels" and with_labels.drop > 2
    assert with_labels.figures["knn_accuracy"] < with_labels.figures["reference_knn_accuracy"]


def test_embedding_collapse_shows_as_low_cosine(digit_embeddings):
    e, _ = digit_embeddings
    collapsed = 0.05 * e + np.ones(e.shape[1])  # every row close to one direction
    m = task_metrics(EMB, samples(e), samples(collapsed))
    assert m.value < 0.3 and m.drop > 70


def test_nearest_neighbours_by_hand():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest_neighbours(x, 1)[:, 0].tolist() == [1, 0, 3, 2]
    assert nearest_neighbours(x, 2, chunk=3).tolist() == nearest_neighbours(x, 2).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Detection: a YOLO-style [1, 4+C, A] output built by hand


def detector_output(rng, classes=3, anchors=300, objects=5):
    """Weak background anchors, and per object three overlapping anchors with a strong score for its class."""
    out = np.zeros((4 + classes, anchors))
    out[0:2] = rng.uniform(20, 620, (2, anchors))
    out[2:4] = rng.uniform(10, 60, (2, anchors))
    out[4:] = rng.uniform(0.0, 0.1, (classes, anchors))
    truth_boxes, truth_classes = [], []
    for k in range(objects):
        cx, cy, size, cls = 80 + 110 * k, 100 + 200 * (k % 2), 40 + 5 * k, k % classes
        for j, score in enumerate((0.9, 0.8, 0.6)):
            a = 3 * k + j
            out[:4, a] = (cx + 2 * j, cy - j, size, size + j)
            out[4:, a] = 0.02
            out[4 + cls, a] = score
        truth_boxes.append(pp.cxcywh_to_xyxy(out[:4, 3 * k][None])[0])
        truth_classes.append(cls)
    return out, (np.array(truth_boxes), np.array(truth_classes))


@pytest.fixture(scope="module")
def detections():
    rng = np.random.default_rng(0)
    outs, truths = zip(*(detector_output(rng) for _ in range(6)))
    return [o[None] for o in outs], list(truths)


LAYOUTS = [("channels_first", 2), ("anchors_first", 1)]


def _layout(arrays, name):
    return [a if name == "channels_first" else np.transpose(a, (0, 2, 1)) for a in arrays]


@pytest.mark.parametrize(("layout", "anchor_axis"), LAYOUTS)
def test_detection_clean_copy_matches_every_box(detections, layout, anchor_axis):
    ref, _ = detections
    task = OutputTask("output0", "detection", {"anchor_axis": anchor_axis})
    rng = np.random.default_rng(1)
    cand = [a + rng.normal(0, 1e-5, a.shape) for a in ref]
    m = roundtrip(task_metrics(task, _layout(ref, layout), _layout(cand, layout)))
    assert m.figures["reference_boxes"] == 30 and m.figures["missed_boxes"] == 0 == m.figures["extra_boxes"]
    assert m.headline == "matched_iou" and m.value > 0.999 and m.drop < 0.1
    assert m.figures["max_score_error"] < 1e-4 and m.figures["box_agreement"] == 100.0
    assert sum(m.plots["iou_histogram"]["counts"]) == 30


@pytest.mark.parametrize(("layout", "anchor_axis"), LAYOUTS)
def test_detection_catches_scores_shifted_on_a_few_anchors(detections, layout, anchor_axis):
    ref, _ = detections
    task = OutputTask("output0", "detection", {"anchor_axis": anchor_axis})
    cand = [a.copy() for a in ref]
    for a in cand[:3]:
        a[0, 5, 100:104] += 0.3  # four background anchors of class 1 cross the 0.25 score threshold
    m = task_metrics(task, _layout(ref, layout), _layout(cand, layout))
    assert m.figures["max_score_error"] == pytest.approx(0.3)
    assert m.figures["extra_boxes"] >= 3 and m.figures["missed_boxes"] == 0
    assert m.figures["box_agreement"] < 100 and m.drop > 0
    # below the threshold the same shift changes no box, but the raw score error still shows it
    quiet = [a.copy() for a in ref]
    quiet[0][0, 5, 100:104] = 0.0
    quiet[0][0, 5, 100:104] += 0.2
    m = task_metrics(task, _layout(ref, layout), _layout(quiet, layout))
    assert m.drop == 0.0 and m.figures["max_score_error"] > 0.1


@pytest.mark.parametrize(("layout", "anchor_axis"), LAYOUTS)
def test_detection_catches_shifted_boxes_and_map_drops(detections, layout, anchor_axis):
    ref, truth = detections
    task = OutputTask("output0", "detection", {"anchor_axis": anchor_axis})
    slight, far = [a.copy() for a in ref], [a.copy() for a in ref]
    for a in slight:
        a[0, 0] += 0.1 * a[0, 2]  # cx moved by a tenth of the width: boxes still match, IoU lower
    for a in far[:3]:
        a[0, 0] += 0.6 * a[0, 2]  # moved by 60% of the width: IoU < 0.5, no match
    m = task_metrics(task, _layout(ref, layout), _layout(slight, layout))
    assert m.figures["missed_boxes"] == 0 and 0.7 < m.value < 0.95 and m.figures["matched_box_error"] > 1
    assert m.figures["box_agreement"] == 100.0 and m.drop == pytest.approx(100 * (1 - m.value))
    m = task_metrics(task, _layout(ref, layout), _layout(far, layout), labels=truth)
    assert m.figures["missed_boxes"] == 15 and m.figures["extra_boxes"] == 15
    assert m.headline == "map50" and m.figures["reference_map50"] == 1.0
    assert m.value < 0.75 and m.drop == pytest.approx(100 * (1.0 - m.value))
    assert set(m.per_class) == {"0", "1", "2"}


def test_detection_box_of_another_class_does_not_match(detections):
    ref, _ = detections
    task = OutputTask("output0", "detection")
    cand = [a.copy() for a in ref]
    cand[0][0, 4:, 0:3] = cand[0][0, [5, 6, 4], 0:3]  # object 0's anchors now score class 2, not class 0
    m = task_metrics(task, ref, cand)
    assert m.figures["missed_boxes"] == 1 == m.figures["extra_boxes"] and m.figures["matched_boxes"] == 29
    assert m.figures["cosine"] > 0.999  # the tensor as a whole barely moved


def test_detection_with_objectness_and_logits():
    """[1, A, 4+1+C] with an objectness channel and score logits, declared."""
    rng = np.random.default_rng(3)
    out, _ = detector_output(rng, classes=2, objects=3)
    probs = np.concatenate([out[:4], np.ones((1, out.shape[1])), out[4:]])
    logits = np.concatenate([probs[:4], np.log(np.clip(probs[4:], 1e-6, 1 - 1e-6) / np.clip(1 - probs[4:], 1e-6, 1))])
    arr = np.transpose(logits, (1, 0))[None]
    task = OutputTask("y", "detection", {"objectness": 4, "probabilities": False})
    cand = arr.copy()
    cand[0, :, 4] -= 20.0  # objectness logit -> ~0: every box gone
    clean = task_metrics(task, [arr], [arr])
    assert clean.figures["reference_boxes"] == 3 and clean.drop == 0.0
    m = task_metrics(task, [arr], [cand])
    assert m.figures["candidate_boxes"] == 0 and m.figures["missed_boxes"] == 3 and m.drop == 100.0


def yolox_head(boxes_xyxy, classes, size=64, strides=(8, 16, 32), num_classes=2):
    """A raw YOLOX head [1, A, 4+1+C] (grid offsets, log sizes, objectness, class scores) whose decode gives
    ``boxes_xyxy``: each box on the anchor of the cell holding its centre at the stride nearest its size."""
    levels = [(size // s, size // s, s) for s in strides]
    rows = np.zeros((sum(r * c for r, c, _ in levels), 5 + num_classes))
    rows[:, 2:4] = np.log(0.5)  # background anchors: half-cell boxes, no object
    for (x0, y0, x1, y1), cls in zip(boxes_xyxy, classes):
        w, h, cx, cy = x1 - x0, y1 - y0, (x0 + x1) / 2, (y0 + y1) / 2
        level = int(np.argmin([abs(np.log(max(w, h) / (4 * s))) for s in strides]))
        start = sum(r * c for r, c, _ in levels[:level])
        r, c, s = levels[level]
        a = start + int(cy // s) * c + int(cx // s)
        rows[a, :4] = (cx / s - cx // s, cy / s - cy // s, np.log(w / s), np.log(h / s))
        rows[a, 4], rows[a, 5 + cls] = 0.9, 1.0
    return rows[None]


def test_detection_grid_decode_scores_pixel_boxes():
    """A raw anchor-free head declared with grid=8/16/32: boxes are decoded to pixels before matching, so the
    ground truth in pixels matches, and an error of the raw log size counts as the pixel error it causes."""
    truth = (np.array([[4.0, 6.0, 20.0, 18.0], [30.0, 8.0, 62.0, 40.0], [10.0, 40.0, 22.0, 60.0]]), np.array([0, 1, 0]))
    head = yolox_head(*truth)
    task = OutputTask("output", "detection", {"objectness": 4, "anchor_axis": 1, "grid": "8/16/32"})
    m = task_metrics(task, [head], [head], labels=[truth])
    assert m.figures["reference_boxes"] == 3 and m.figures["map50"] == 1.0
    raw = task_metrics(OutputTask("output", "detection", {"objectness": 4, "anchor_axis": 1}), [head], [head],
                       labels=[truth])
    assert raw.figures["map50"] == 0.0  # undecoded, the head's boxes are offsets, nowhere near the truth
    cand = head.copy()
    a = int(np.flatnonzero(head[0, :, 5 + 1] > 0)[0])  # the 32 px box
    cand[0, a, 2] += np.log(1.25)  # its width 25% larger in pixels
    m = task_metrics(task, [head], [cand])
    assert m.figures["matched_boxes"] == 3 and m.value == pytest.approx((2 + 1 / 1.25) / 3, abs=1e-6)


def test_detection_grid_must_fit_the_anchors():
    task = OutputTask("output", "detection", {"anchor_axis": 1, "grid": "8/16/32"})
    with pytest.raises(ConfigError, match=r"'output' has 85 anchors, which a square input") as err:
        task_metrics(task, [np.zeros((1, 85, 6))], [np.zeros((1, 85, 6))])
    assert "grid_width=W" in err.value.hint
    wide = OutputTask("output", "detection", {"anchor_axis": 1, "grid": "8/16/32", "grid_width": 128})
    anchors = 8 * 16 + 4 * 8 + 2 * 4  # 64 high, 128 wide
    assert task_metrics(wide, [np.zeros((1, anchors, 7))], [np.zeros((1, anchors, 7))]).drop == 0.0
    with pytest.raises(ConfigError, match="layout cxcywh"):
        detection_layout(OutputTask("output", "detection", {"grid": "8/16", "layout": "xyxy"}), (1, 80, 6))


def test_voc_map_by_hand():
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))]
    # by score: a hit, a false positive, a hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    dets = [(np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]), np.array([0.9, 0.8, 0.7]),
             np.array([0, 0, 0]))]
    value, per_class = mean_average_precision(dets, gt)
    assert value == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3)) and set(per_class) == {0}
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    # a duplicate detection of the same object is a false positive
    dup = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]), np.array([0, 0]))]
    assert mean_average_precision(dup, [(gt[0][0][:1], gt[0][1][:1])])[0] == 1.0
    assert SCORE_THRESHOLD == 0.25


# ---------------------------------------------------------------------------------------------------------------
# Dense maps and sequences


def blob_map(cx: int, cy: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (1 / (1 + np.exp(-(36 - (xx - cx) ** 2 - (yy - cy) ** 2) / 4.0)))[None, None]


def test_dense_sigmoid_map_iou():
    task = OutputTask("mask", "dense")
    ref = [blob_map(10, 12), blob_map(20, 16)]
    clean = task_metrics(task, ref, [r + 1e-6 for r in ref])
    assert clean.value == 1.0 and clean.drop == 0.0
    shifted = [blob_map(13, 12), blob_map(20, 16)]
    m = task_metrics(task, ref, shifted)
    on_r = np.concatenate([r.ravel() for r in ref]) >= 0.5
    on_c = np.concatenate([c.ravel() for c in shifted]) >= 0.5
    assert m.value == pytest.approx((on_r & on_c).sum() / (on_r | on_c).sum()) and 0.3 < m.value < 0.9
    labels = [r[0, 0] >= 0.5 for r in ref]
    m = task_metrics(task, ref, shifted, labels=labels)
    assert m.figures["reference_iou_vs_labels"] == 1.0 and m.drop == pytest.approx(100 * (1 - m.value))


def test_dense_multi_channel_sigmoid_map_per_channel_iou():
    task = OutputTask("heat", "dense")
    ref = [np.concatenate([blob_map(10, 12), blob_map(20, 20)], axis=1)]
    cand = [np.concatenate([blob_map(10, 12), blob_map(24, 20)], axis=1)]
    m = task_metrics(task, ref, cand, labels=[ref[0][0] >= 0.5])
    assert m.per_class["0"]["iou_vs_reference"] == 1.0 and m.per_class["1"]["iou_vs_reference"] < 0.8
    assert m.headline == "iou_vs_labels" and m.figures["reference_iou_vs_labels"] == 1.0
    assert m.value == pytest.approx(m.figures["iou"]) and m.value < 1.0 and m.drop > 0


def test_dense_softmax_map_pixel_agreement():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (2, 16, 16))
    logits = np.moveaxis(np.eye(3)[classes] * 4.0, -1, 1) + rng.normal(0, 0.1, (2, 3, 16, 16))
    task = OutputTask("seg", "dense", {"exclusive": True, "probabilities": False})
    ref = [logits[:1], logits[1:]]
    cand = [a.copy() for a in ref]
    cand[0][0, :, 4:8, 4:8] = np.roll(cand[0][0, :, 4:8, 4:8], 1, axis=0)  # every class moves on 16 pixels
    m = task_metrics(task, ref, cand)
    assert m.headline == "pixel_agreement" and m.value == pytest.approx(100 * (1 - 16 / 512))
    assert m.figures["miou_vs_reference"] < 1.0
    m = task_metrics(task, ref, cand, labels=[c for c in classes])
    assert m.figures["reference_miou"] == 1.0 and m.figures["pixel_accuracy"] == pytest.approx(100 * (1 - 16 / 512))
    assert m.drop > 0


def ctc_frames(tokens: list[int], classes: int = 10, blank: int = 0) -> np.ndarray:
    """[1, T, C] log-probabilities whose greedy CTC decode is ``tokens`` (each token two frames, then a blank)."""
    path = []
    for t in tokens:
        path += [t, t, blank]
    return np.log(pp.softmax(np.eye(classes)[path] * 6.0, axis=1))[None]


def test_sequence_catches_a_dropped_token():
    seqs = [[3, 3, 5, 7], [1, 2], [9, 8, 7, 6, 5]]
    task = OutputTask("logp", "sequence", {"probabilities": False})
    ref = [ctc_frames(s) for s in seqs]
    assert [pp.ctc_greedy_decode(r[0]) for r in ref] == seqs
    clean = task_metrics(task, ref, [r + 1e-6 for r in ref])
    assert clean.value == 0.0 and clean.figures["sequence_agreement"] == 100.0
    cand = [r.copy() for r in ref]
    cand[2][0, 6:8] = ctc_frames([0])[0, 0]  # the frames of the third token become blanks
    m = task_metrics(task, ref, cand)
    assert m.figures["sequence_agreement"] == pytest.approx(100 * 2 / 3)
    assert m.value == pytest.approx(1 / 11) and m.drop == pytest.approx(100 / 11) and not m.higher_is_better
    m = task_metrics(task, ref, cand, labels=seqs)
    assert m.figures["reference_token_error_rate_vs_labels"] == 0.0 and m.value == pytest.approx(1 / 11)


def test_a_time_major_sequence_decodes_along_its_time_axis():
    seqs = [[3, 5, 7], [1, 2, 9]]
    frames = np.concatenate([ctc_frames(s) for s in seqs])  # [N, T, C]
    task = OutputTask("logp", "sequence", {"probabilities": False, "time_axis": 0})
    time_major = frames.transpose(1, 0, 2)  # [T, N, C]: what a CRNN whose LSTM is not batch_first gives
    assert pp.ctc_greedy_decode(time_major[:, 1]) == seqs[1]
    cand = time_major.copy()
    cand[3:5, 1] = ctc_frames([0])[0, 0]  # the second sequence's second token becomes blanks
    m = task_metrics(task, [time_major], [cand])
    assert m.figures["sequence_agreement"] == 50.0 and m.value == pytest.approx(1 / 6)
    # read as batch-major, the same array would be 9 one-frame "sequences": the declaration matters
    assert task_metrics(OutputTask("logp", "sequence", {"probabilities": False}), [time_major], [cand]).rows == 9


def test_argmax_sequence_decoding_keeps_every_frame():
    frames = ctc_frames([4, 4])
    task = OutputTask("tok", "sequence", {"decode": "argmax"})
    cand = frames.copy()
    cand[0, 2] = frames[0, 0]  # one frame changed: 1 of 6 tokens
    m = task_metrics(task, [frames], [cand])
    assert m.value == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------------------------------------------
# Generic, errors, serialisation


def test_generic_figures():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 1, 64))
    noisy = x + rng.normal(0, 0.01, x.shape)
    m = task_metrics(OutputTask("y", "generic"), list(x), list(noisy))
    assert m.figures["snr_db"] == pytest.approx(40.0, abs=0.5)
    assert m.value == m.figures["cosine"] and m.drop == pytest.approx(100 * (1 - m.value))
    idx = [np.array([[3, 1, 2]]), np.array([[1, 1, 1]])]
    m = task_metrics(OutputTask("idx", "generic"), idx, [idx[0], np.array([[1, 1, 2]])])
    assert m.figures["max_abs_error"] == 1.0


def test_non_finite_candidate_values_are_counted_and_scored_as_errors(digits):
    clf, x, _ = digits
    logits = clf.decision_function(x[:50])
    cand = logits.copy()
    cand[:5] = np.nan
    m = task_metrics(CLS, samples(logits), samples(cand))
    assert m.figures["nonfinite_values"] == 50 and m.value < 100
    json.dumps(m.to_dict(), allow_nan=False)


def test_mismatches_are_user_errors():
    task = OutputTask("logits", "classification")
    a = [np.zeros((1, 4))]
    with raises_user_error(CalibrationError, r"output 'logits' of sample 0 has shape \(1, 5\)"):
        task_metrics(task, a, [np.zeros((1, 5))])
    with raises_user_error(CalibrationError, r"3 labels for the 1 rows of output 'logits'"):
        task_metrics(task, a, a, labels=[0, 1, 2])
    with raises_user_error(CalibrationError, r"class ids 0..3"):
        task_metrics(task, a, a, labels=[7])
    with raises_user_error(ConfigError, r"output 'logits' has shape \[1, 4\]: it has no axis 3"):
        task_metrics(OutputTask("logits", "classification", {"axis": 3}), a, a)
    with raises_user_error(ConfigError, r"output 'logits' has 1 class[\s\S]*logits=multilabel"):
        task_metrics(task, [np.zeros((1, 1))], [np.zeros((1, 1))])
    with raises_user_error(CalibrationError, r"no evaluation samples"):
        task_metrics(task, [], [])
