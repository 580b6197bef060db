"""Accuracy figures on hand-made outputs whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgec.benchmarks.accuracy import SNR_CAP_DB, AccuracyReport, compare_outputs
from edgec.compiler.errors import CalibrationError


def one_hot_logits(classes: list[int], n_classes: int = 5) -> list[dict[str, np.ndarray]]:
    out = []
    for c in classes:
        logits = np.zeros((1, n_classes), np.float32)
        logits[0, c] = 3.0
        out.append({"logits": logits})
    return out


def test_identical_outputs():
    ref = one_hot_logits([0, 1, 2, 3, 4])
    report = compare_outputs(ref, [{k: v.copy() for k, v in s.items()} for s in ref])
    m = report.per_output["logits"]
    assert m.cosine == pytest.approx(1.0)
    assert m.snr_db == SNR_CAP_DB
    assert m.max_abs_error == 0.0 and m.mean_abs_error == 0.0
    assert report.agreement == 100.0
    assert report.accuracy_drop == 0.0 and report.drop_basis == "agreement"


def test_agreement_80_when_two_of_ten_argmaxes_differ():
    ref = one_hot_logits([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    cand = one_hot_logits([0, 1, 2, 3, 4, 0, 1, 2, 4, 0])
    report = compare_outputs(ref, cand)
    assert report.agreement == pytest.approx(80.0)
    assert report.accuracy_drop == pytest.approx(20.0)
    assert report.drop_basis == "agreement"
    assert report.accuracy is None and report.reference_accuracy is None
    assert report.per_output["logits"].rows == 10


def test_snr_cosine_and_errors_known_values():
    ref = [{"y": np.array([[3.0, 4.0]], np.float32)}]
    cand = [{"y": np.array([[3.0, 3.0]], np.float32)}]
    m = compare_outputs(ref, cand).per_output["y"]
    # signal 25, noise 1 -> 10*log10(25)
    assert m.snr_db == pytest.approx(10 * math.log10(25.0))
    assert m.cosine == pytest.approx(21.0 / (5.0 * math.sqrt(18.0)))
    assert m.max_abs_error == pytest.approx(1.0)
    assert m.mean_abs_error == pytest.approx(0.5)


def test_orthogonal_outputs_have_zero_cosine():
    m = compare_outputs([{"y": np.array([1.0, 0.0])}], [{"y": np.array([0.0, 1.0])}]).per_output["y"]
    assert m.cosine == pytest.approx(0.0)
    assert m.snr_db == pytest.approx(10 * math.log10(1.0 / 2.0))


def test_label_accuracy_and_drop():
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    ref = one_hot_logits([0, 1, 2, 3, 4, 0, 1, 2, 3, 0])  # 9/10 right
    cand = one_hot_logits([0, 1, 2, 3, 4, 0, 1, 1, 1, 0])  # 7/10 right
    report = compare_outputs(ref, cand, labels=labels)
    assert report.reference_accuracy == pytest.approx(90.0)
    assert report.accuracy == pytest.approx(70.0)
    assert report.accuracy_drop == pytest.approx(20.0)
    assert report.drop_basis == "labels"
    assert report.agreement == pytest.approx(80.0)


def test_batched_samples_take_one_label_per_row():
    ref = [{"p": np.array([[1.0, 0.0], [0.0, 1.0]])}, {"p": np.array([[1.0, 0.0], [1.0, 0.0]])}]
    cand = [{"p": np.array([[1.0, 0.0], [1.0, 0.0]])}, {"p": np.array([[1.0, 0.0], [1.0, 0.0]])}]
    report = compare_outputs(ref, cand, labels=[0, 1, 0, 0])
    assert report.per_output["p"].rows == 4
    assert report.reference_accuracy == pytest.approx(100.0)
    assert report.accuracy == pytest.approx(75.0)
    assert report.agreement == pytest.approx(75.0)


def test_wrong_label_count_is_a_calibration_error():
    ref = one_hot_logits([0, 1, 2])
    with pytest.raises(CalibrationError, match="2 labels for 3 predictions"):
        compare_outputs(ref, ref, labels=[0, 1])


def test_regression_output_has_no_classification_figures():
    ref = [{"y": np.array([[0.5]], np.float32)}, {"y": np.array([[1.5]], np.float32)}]
    report = compare_outputs(ref, ref)
    assert not report.per_output["y"].classification
    assert report.agreement is None and report.accuracy_drop is None and report.drop_basis is None


def test_integer_outputs_are_not_classification():
    ref = [{"idx": np.array([[1, 2, 3]], np.int64)}]
    assert not compare_outputs(ref, ref).per_output["idx"].classification


def test_headline_comes_from_first_classification_output():
    ref = [{"emb": np.array([[0.1]]), "a": np.array([[1.0, 0.0]]), "b": np.array([[1.0, 0.0]])}]
    cand = [{"emb": np.array([[0.1]]), "a": np.array([[0.0, 1.0]]), "b": np.array([[1.0, 0.0]])}]
    report = compare_outputs(ref, cand)
    assert report.primary.name == "a"
    assert report.agreement == 0.0
    assert report.per_output["b"].top1_agreement == 100.0


def test_shape_mismatch_names_the_output():
    with pytest.raises(CalibrationError, match="output 'y'"):
        compare_outputs([{"y": np.zeros((1, 3))}], [{"y": np.zeros((1, 4))}])


def test_missing_output_in_candidate():
    with pytest.raises(CalibrationError, match="candidate has no output 'y'"):
        compare_outputs([{"y": np.zeros(3)}], [{"z": np.zeros(3)}])


def test_nonfinite_values_are_counted_and_json_stays_valid():
    ref = [{"y": np.array([1.0, 2.0, 3.0])}]
    cand = [{"y": np.array([1.0, np.nan, 3.0])}]
    m = compare_outputs(ref, cand).per_output["y"]
    assert m.nonfinite_values == 1
    assert m.max_abs_error == 0.0
    json.dumps(compare_outputs(ref, cand).to_dict(), allow_nan=False)


def test_report_round_trip_and_json_safe():
    ref = one_hot_logits([0, 1, 2, 3])
    cand = one_hot_logits([0, 1, 2, 2])
    report = compare_outputs(ref, cand, labels=[0, 1, 2, 3], reference_name="onnxruntime/fp32")
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["accuracy_drop"] == pytest.approx(25.0) and d["drop_basis"] == "labels"
    assert AccuracyReport.from_dict(d) == report


def test_top1_agreement_is_for_classifiers_not_for_a_probability_map():
    from edgec.compiler.tasks import OutputTask

    rng = np.random.default_rng(0)
    maps = [{"map": rng.random((1, 1, 16, 16)).astype(np.float32), "logits": rng.standard_normal((1, 5))}
            for _ in range(4)]
    tasks = [OutputTask("map", "dense", {}), OutputTask("logits", "classification", {})]
    report = compare_outputs(maps, [{k: v + 0.01 for k, v in m.items()} for m in maps], tasks=tasks)
    assert report.per_output["map"].top1_agreement is None and not report.per_output["map"].classification
    assert report.per_output["logits"].top1_agreement == 100.0
    assert report.tasks["map"].task == "dense"
