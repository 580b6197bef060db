"""load_dataset on a Python callable: ``path/to/file.py:function`` and ``module:function``."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from edgec.calibration_data import load_dataset
from edgec.compiler.errors import CalibrationError, ConfigError
from edgec.compiler.types import InputSpec, TensorSpec

ONE = InputSpec((TensorSpec("x", (1, 2, 3), "float32"),))
TWO = InputSpec((TensorSpec("ids", (1, 4), "int64"), TensorSpec("x", (1, 2, 3), "float32")))

SOURCE = textwrap.dedent(
    """
    import numpy as np

    def dicts():
        return [{"x": np.full((1, 2, 3), i, np.float32)} for i in range(5)]

    def bare_arrays():  # a generator of float64 samples without their batch axis
        for i in range(4):
            yield np.full((2, 3), i, np.float64)

    def batches():
        return [np.zeros((8, 2, 3), np.float32), np.ones((4, 2, 3), np.float32)]

    def pairs():
        return [(np.arange(4) + i, np.full((1, 2, 3), i, np.float32)) for i in range(3)]

    def keyed_pairs():
        return ({"x": np.zeros((1, 2, 3), np.float32), "ids": np.arange(4)} for _ in range(2))

    def number():
        return 3

    def wrong_key():
        return [{"y": np.zeros((1, 2, 3), np.float32)}]

    def wrong_shape():
        return [np.zeros((1, 3, 2), np.float32)]

    def nan_in_second():
        return [np.zeros((1, 2, 3), np.float32), np.full((1, 2, 3), np.nan, np.float32)]

    def ints():
        return [np.zeros((1, 2, 3), np.int32)]

    def nothing():
        return []

    def objects():
        return [object()]
    """
)


@pytest.fixture
def calib_py(tmp_path):
    path = tmp_path / "calib_source.py"
    path.write_text(SOURCE)
    return path


def test_dicts_from_file(calib_py):
    spec_str = f"{calib_py}:dicts"
    ds = load_dataset(spec_str, ONE)
    assert len(ds) == 5 and ds.source == spec_str
    assert ds.samples[3]["x"].shape == (1, 2, 3) and float(ds.samples[3]["x"].max()) == 3


def test_module_function(calib_py, monkeypatch):
    monkeypatch.syspath_prepend(str(calib_py.parent))
    ds = load_dataset("calib_source:bare_arrays", ONE)
    assert len(ds) == 4
    assert all(s["x"].shape == (1, 2, 3) and s["x"].dtype == np.float32 for s in ds)


def test_batched_items_are_split(calib_py):
    ds = load_dataset(f"{calib_py}:batches", ONE, samples=6, seed=0)
    assert len(ds) == 6
    full = load_dataset(f"{calib_py}:batches", ONE)
    assert len(full) == 12 and [float(s["x"].max()) for s in full] == [0.0] * 8 + [1.0] * 4


def test_tuples_and_dicts_for_two_inputs(calib_py):
    ds = load_dataset(f"{calib_py}:pairs", TWO)
    assert len(ds) == 3 and list(ds.samples[0]) == ["ids", "x"]
    assert ds.samples[2]["ids"].tolist() == [[2, 3, 4, 5]] and ds.samples[2]["ids"].dtype == np.int64
    assert len(load_dataset(f"{calib_py}:keyed_pairs", TWO)) == 2


def test_not_importable(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset("edgec_no_such_module_xyz:make", ONE)
    assert "edgec_no_such_module_xyz" in str(e.value) and "--calib" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_dataset(f"{tmp_path / 'missing.py'}:make", ONE, role="evaluation")
    assert "missing.py" in str(e.value) and "--data" in str(e.value)


def test_missing_function(calib_py):
    with pytest.raises(ConfigError, match="no_such_fn"):
        load_dataset(f"{calib_py}:no_such_fn", ONE)


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        ("number", ["not an iterable"]),
        ("wrong_key", ["item 0", "'x'", "keys present: y"]),
        ("wrong_shape", ["item 0", "'x'", "1x3x2", "1x2x3"]),
        ("nan_in_second", ["sample 1", "'x'", "NaN"]),
        ("ints", ["'x'", "float32", "int32"]),
        ("nothing", ["no samples"]),
        ("objects", ["item 0", "'x'", "not a numeric array"]),
    ],
)
def test_bad_items(calib_py, fn, words):
    with pytest.raises(CalibrationError) as e:
        load_dataset(f"{calib_py}:{fn}", ONE)
    msg = str(e.value)
    assert f"{calib_py}:{fn}" in msg
    for word in words:
        assert word in msg


def test_single_arrays_for_two_inputs(calib_py):
    with pytest.raises(CalibrationError, match="single array"):
        load_dataset(f"{calib_py}:batches", TWO)
