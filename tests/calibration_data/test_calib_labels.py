"""load_labels, and labels following the sampling in load_dataset."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.calibration_data import EvaluationSet, load_dataset, load_labels
from edgec.compiler.errors import CalibrationError, InputFileError
from edgec.compiler.types import InputSpec, TensorSpec

SPEC = InputSpec((TensorSpec("x", (1, 4), "float32"),))


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("l.npy", lambda p: np.save(p, np.array([3, 1, 2], np.int32))),
        ("l.npy", lambda p: np.save(p, np.array([[3], [1], [2]]))),
        ("l.npy", lambda p: np.save(p, np.array([3.0, 1.0, 2.0]))),
        ("l.npz", lambda p: np.savez(p, labels=np.array([3, 1, 2]), input=np.zeros((3, 4)))),
        ("l.txt", lambda p: p.write_text("3\n1\n\n2\n")),
        ("l.csv", lambda p: p.write_text("label\n3\n1\n2\n")),
    ],
)
def test_label_formats(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    labels = load_labels(path, expected=3)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1, 2]


def test_count_mismatch(tmp_path):
    path = tmp_path / "l.npy"
    np.save(path, np.arange(5))
    with pytest.raises(CalibrationError, match="5 labels.*4 samples") as e:
        load_labels(path, expected=4)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("name", "content", "error", "words"),
    [
        ("l.txt", "1\ntwo\n3\n", CalibrationError, ["line 2", "'two'"]),
        ("l.txt", "label\n1\n", CalibrationError, ["line 1"]),  # a header only in .csv
        ("l.txt", "\n\n", CalibrationError, ["no labels"]),
        ("l.json", "[1, 2]", InputFileError, ["unknown extension"]),
    ],
)
def test_bad_text_labels(tmp_path, name, content, error, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error) as e:
        load_labels(path)
    assert str(path) in str(e.value)
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize(
    ("arr", "words"),
    [
        (np.array([0.5, 1.0]), ["integers"]),
        (np.zeros((2, 3), np.int64), ["1-D", "2x3"]),
        (np.array([True]), ["bool"]),
    ],
)
def test_bad_array_labels(tmp_path, arr, words):
    path = tmp_path / "l.npy"
    np.save(path, arr)
    with pytest.raises(CalibrationError) as e:
        load_labels(path)
    assert str(path) in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_npz_without_labels(tmp_path):
    path = tmp_path / "l.npz"
    np.savez(path, y=np.arange(3))
    with pytest.raises(CalibrationError, match=r"'labels'.*arrays present: y") as e:
        load_labels(path)
    assert str(path) in str(e.value)


def test_missing_and_corrupt_labels(tmp_path):
    with pytest.raises(InputFileError) as e:
        load_labels(tmp_path / "nope.npy")
    assert "nope.npy" in str(e.value) and "--labels" in e.value.hint
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputFileError, match="bad.npy"):
        load_labels(bad)


@pytest.fixture
def data_and_labels(tmp_path):
    """Sample i is filled with i and labelled i % 10, so alignment is visible after sampling."""
    n = 50
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.repeat(np.arange(n, dtype=np.float32)[:, None], 4, axis=1))
    labels = tmp_path / "eval_labels.txt"
    labels.write_text("\n".join(str(i % 10) for i in range(n)))
    return data, labels


def test_labels_follow_sampling(data_and_labels):
    data, labels = data_and_labels
    ds = load_dataset(data, SPEC, samples=15, seed=7, role="evaluation", labels=labels)
    assert isinstance(ds, EvaluationSet) and len(ds.labels) == len(ds) == 15
    picked = [int(s["x"][0, 0]) for s in ds]
    assert ds.labels.tolist() == [i % 10 for i in picked]
    again = load_dataset(data, SPEC, samples=15, seed=7, role="evaluation", labels=labels)
    assert again.labels.tolist() == ds.labels.tolist()


def test_labels_without_sampling(data_and_labels):
    data, labels = data_and_labels
    ds = load_dataset(data, SPEC, role="evaluation", labels=labels)
    assert ds.labels.tolist() == [i % 10 for i in range(50)]


def test_labels_must_cover_the_whole_source(data_and_labels, tmp_path):
    data, _ = data_and_labels
    short = tmp_path / "short.npy"
    np.save(short, np.arange(15))  # as many as the samples asked for, but not one per source sample
    with pytest.raises(CalibrationError, match="15 labels.*50 samples") as e:
        load_dataset(data, SPEC, samples=15, role="evaluation", labels=short)
    assert str(short) in str(e.value)


def test_labels_from_the_data_npz(tmp_path):
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((6, 4), np.float32), labels=np.arange(6))
    ds = load_dataset(path, SPEC, samples=3, seed=0, labels=path)
    assert len(ds.labels) == 3
