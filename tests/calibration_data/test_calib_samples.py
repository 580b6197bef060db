"""The bundled digits data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from edgec.calibration_data import digits_spec, digits_split, load_dataset, write_digits_sets  # noqa: E402


@pytest.fixture(scope="module")
def split():
    return digits_split(seed=0)


def test_shapes_and_ranges(split):
    assert split["x_train"].shape == (1437, 1, 8, 8)
    assert split["x_calib"].shape == (200, 1, 8, 8)
    assert split["x_eval"].shape == (360, 1, 8, 8)
    assert split["y_train"].shape == (1437,) and split["y_eval"].shape == (360,)
    for key in ("x_train", "x_calib", "x_eval"):
        assert split[key].dtype == np.float32
        assert split[key].min() >= 0.0 and split[key].max() <= 1.0
    assert split["y_eval"].dtype == np.int64


def test_stratified(split):
    counts = np.bincount(split["y_eval"], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_calib_comes_from_train(split):
    train = {row.tobytes() for row in split["x_train"]}
    assert all(row.tobytes() in train for row in split["x_calib"])


def test_deterministic(split):
    again = digits_split(seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = digits_split(seed=1)
    assert not np.array_equal(split["y_eval"], other["y_eval"])


def test_written_sets_load(tmp_path, split):
    paths = write_digits_sets(tmp_path / "sets")
    assert set(paths) == {"calib", "eval", "eval_labels"} and all(p.is_file() for p in paths.values())
    calib = load_dataset(paths["calib"], digits_spec())
    assert len(calib) == 200 and np.array_equal(calib.stacked()["input"], split["x_calib"])
    ev = load_dataset(paths["eval"], digits_spec(), role="evaluation", labels=paths["eval_labels"])
    assert len(ev) == 360 and np.array_equal(ev.labels, split["y_eval"])
