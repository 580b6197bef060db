"""load_dataset on .npz and .npy sources: splitting, sampling, and every way the data can be wrong."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgec.calibration_data import EvaluationSet, load_dataset
from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError
from edgec.compiler.types import ArrayCalibrationSet, InputSpec, TensorSpec


def spec_of(*tensors: TensorSpec) -> InputSpec:
    return InputSpec(tuple(tensors))


IMG = spec_of(TensorSpec("x", (1, 3, 24, 24), "float32", "NCHW"))


def indexed(n: int, shape: tuple[int, ...] = (3, 24, 24), dtype=np.float32) -> np.ndarray:
    """n samples whose every value is the sample's index, so a sample tells where it came from."""
    return np.broadcast_to(np.arange(n, dtype=dtype).reshape(-1, *([1] * len(shape))), (n, *shape)).copy()


@pytest.fixture
def npz_200(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=indexed(200))
    return path


def test_npz_splits_samples_along_first_axis(npz_200):
    ds = load_dataset(npz_200, IMG)
    assert isinstance(ds, ArrayCalibrationSet) and not isinstance(ds, EvaluationSet)
    assert len(ds) == 200
    assert ds.source == str(npz_200)
    first = ds.samples[0]
    assert list(first) == ["x"]
    assert first["x"].shape == (1, 3, 24, 24) and first["x"].dtype == np.float32
    assert first["x"].flags.c_contiguous and first["x"].base is None  # a copy, not a view of the whole array
    assert [float(s["x"][0, 0, 0, 0]) for s in ds] == list(range(200))


def test_dynamic_batch_matches_any_rows(npz_200):
    ds = load_dataset(npz_200, spec_of(TensorSpec("x", ("N", 3, "H", "W"), "float32")))
    assert len(ds) == 200 and ds.samples[5]["x"].shape == (1, 3, 24, 24)


def test_fixed_batch_groups_rows(npz_200, tmp_path):
    ds = load_dataset(npz_200, spec_of(TensorSpec("x", (4, 3, 24, 24))))
    assert len(ds) == 50 and ds.samples[1]["x"].shape == (4, 3, 24, 24)
    assert ds.samples[1]["x"][:, 0, 0, 0].tolist() == [4, 5, 6, 7]
    odd = tmp_path / "odd.npz"
    np.savez(odd, x=indexed(10))
    with pytest.raises(CalibrationError, match="multiple of"):
        load_dataset(odd, spec_of(TensorSpec("x", (4, 3, 24, 24))))


def test_single_input_takes_single_array_of_another_name(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=indexed(3))
    assert len(load_dataset(path, IMG)) == 3


def test_multi_input_npz(tmp_path):
    spec = spec_of(TensorSpec("ids", (1, 5), "int64"), TensorSpec("mask", ("B", 5), "float32"))
    path = tmp_path / "two.npz"
    np.savez(path, mask=np.ones((7, 5)), ids=np.arange(35, dtype=np.int32).reshape(7, 5), extra=np.zeros(3))
    ds = load_dataset(path, spec)
    assert len(ds) == 7
    assert list(ds.samples[0]) == ["ids", "mask"]
    assert ds.samples[2]["ids"].dtype == np.int64 and ds.samples[2]["ids"].tolist() == [[10, 11, 12, 13, 14]]
    assert ds.samples[2]["mask"].dtype == np.float32  # float64 cast silently
    stacked = ds.stacked()
    assert stacked["ids"].shape == (7, 5)


def test_multi_input_counts_must_agree(tmp_path):
    spec = spec_of(TensorSpec("a", (1, 2)), TensorSpec("b", (1, 2)))
    path = tmp_path / "uneven.npz"
    np.savez(path, a=np.zeros((3, 2), np.float32), b=np.zeros((4, 2), np.float32))
    with pytest.raises(CalibrationError, match="different sample counts") as e:
        load_dataset(path, spec)
    assert str(path) in str(e.value)


def test_missing_input_in_npz_names_input_and_arrays(tmp_path):
    spec = spec_of(TensorSpec("a", (1, 2)), TensorSpec("b", (1, 2)))
    path = tmp_path / "m.npz"
    np.savez(path, a=np.zeros((3, 2), np.float32), c=np.zeros((3, 2), np.float32))
    with pytest.raises(CalibrationError) as e:
        load_dataset(path, spec)
    msg = str(e.value)
    assert str(path) in msg and "'b'" in msg and "arrays present: a, c" in msg


def test_single_input_missing_among_several_arrays(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, p=indexed(2), q=indexed(2))
    with pytest.raises(CalibrationError, match=r"'x'.*arrays present: p, q"):
        load_dataset(path, IMG)


def test_npy_single_input(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, indexed(5))
    ds = load_dataset(path, IMG)
    assert len(ds) == 5 and ds.samples[4]["x"].shape == (1, 3, 24, 24)


def test_npy_with_multi_input_model(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, indexed(5))
    with pytest.raises(CalibrationError, match="inputs a, b") as e:
        load_dataset(path, spec_of(TensorSpec("a", (1, 3, 24, 24)), TensorSpec("b", (1, 3, 24, 24))))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("shape", [(200, 24, 24), (200, 3, 24, 25), (200, 2, 3, 24, 24)])
def test_wrong_shape_names_file_input_expected_and_found(tmp_path, shape):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros(shape, np.float32))
    with pytest.raises(CalibrationError) as e:
        load_dataset(path, IMG)
    msg = str(e.value)
    assert str(path) in msg and "'x'" in msg
    assert "x".join(map(str, shape)) in msg and "1x3x24x24" in msg and "Nx3x24x24" in msg


def test_float64_cast_silently(tmp_path):
    path = tmp_path / "f64.npz"
    np.savez(path, x=indexed(3, dtype=np.float64))
    ds = load_dataset(path, IMG)
    assert all(s["x"].dtype == np.float32 for s in ds)


@pytest.mark.parametrize(
    ("data_dtype", "input_dtype"),
    [(np.uint8, "float32"), (np.int64, "float32"), (np.float32, "int64"), (np.bool_, "int64")],
)
def test_wrong_dtype_family(tmp_path, data_dtype, input_dtype):
    path = tmp_path / "dt.npz"
    np.savez(path, x=np.zeros((4, 6), dtype=data_dtype))
    with pytest.raises(CalibrationError) as e:
        load_dataset(path, spec_of(TensorSpec("x", (1, 6), input_dtype)))
    msg = str(e.value)
    assert str(path) in msg and "'x'" in msg and input_dtype in msg and np.dtype(data_dtype).name in msg


def test_int_width_cast_when_values_fit(tmp_path):
    path = tmp_path / "ids.npz"
    np.savez(path, x=np.arange(12, dtype=np.int64).reshape(2, 6))
    ds = load_dataset(path, spec_of(TensorSpec("x", (1, 6), "int8")))
    assert ds.samples[1]["x"].dtype == np.int8 and ds.samples[1]["x"].tolist() == [[6, 7, 8, 9, 10, 11]]
    np.savez(path, x=np.full((2, 6), 300, dtype=np.int64))
    with pytest.raises(CalibrationError, match=r"outside the int8 range") as e:
        load_dataset(path, spec_of(TensorSpec("x", (1, 6), "int8")))
    assert "'x'" in str(e.value)


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_names_input_and_sample(tmp_path, bad, word):
    data = indexed(10)
    data[7, 1, 2, 3] = bad
    path = tmp_path / "nan.npz"
    np.savez(path, x=data)
    with pytest.raises(CalibrationError) as e:
        load_dataset(path, IMG)
    msg = str(e.value)
    assert str(path) in msg and "sample 7" in msg and "'x'" in msg and word in msg


def test_float64_beyond_float32_range(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, x=np.full((2, 4), 1e300))
    with pytest.raises(CalibrationError, match="beyond the float32 range"):
        load_dataset(path, spec_of(TensorSpec("x", (1, 4))))


def test_empty_sources(tmp_path):
    zero = tmp_path / "zero.npz"
    np.savez(zero, x=np.zeros((0, 3, 24, 24), np.float32))
    with pytest.raises(CalibrationError, match="no samples") as e:
        load_dataset(zero, IMG)
    assert str(zero) in str(e.value)
    nothing = tmp_path / "nothing.npz"
    np.savez(nothing)
    with pytest.raises(CalibrationError, match="no arrays") as e:
        load_dataset(nothing, IMG)
    assert str(nothing) in str(e.value)


@pytest.mark.parametrize(
    ("role", "option"), [("calibration", "--calib-samples"), ("evaluation", "--samples")]
)
def test_fewer_samples_than_asked(npz_200, role, option):
    with pytest.raises(CalibrationError) as e:
        load_dataset(npz_200, IMG, samples=500, role=role)
    assert str(npz_200) in str(e.value) and "200 samples" in str(e.value) and "500" in str(e.value)
    assert option in e.value.hint and "200" in e.value.hint


@pytest.mark.parametrize(("role", "option"), [("calibration", "--calib"), ("evaluation", "--data")])
def test_missing_file(tmp_path, role, option):
    path = tmp_path / "nope.npz"
    with pytest.raises(InputFileError) as e:
        load_dataset(path, IMG, role=role)
    assert str(path) in str(e.value) and option in str(e.value)
    assert option in e.value.hint


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(InputFileError, match="unknown data file extension") as e:
        load_dataset(path, IMG)
    assert str(path) in str(e.value) and "--calib" in e.value.hint


def test_truncated_npz(npz_200, tmp_path):
    bad = tmp_path / "truncated.npz"
    data = npz_200.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError) as e:
        load_dataset(bad, IMG)
    assert str(bad) in str(e.value)


def test_npz_with_corrupt_member(tmp_path):
    # The zip directory is intact but the compressed array data is not: the error comes when reading it.
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).standard_normal((20, 3, 24, 24)).astype(np.float32))
    data = bytearray(path.read_bytes())
    for i in range(200, 2000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputFileError) as e:
        load_dataset(path, IMG)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not numpy at all", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', "])
def test_garbage_npy(tmp_path, content):
    path = tmp_path / "g.npy"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as e:
        load_dataset(path, IMG)
    assert str(path) in str(e.value)


def test_npy_named_npz_and_back(tmp_path):
    arr_as_npz = tmp_path / "a.npz"
    with open(arr_as_npz, "wb") as f:
        np.save(f, indexed(2))
    with pytest.raises(InputFileError, match="not an .npz archive"):
        load_dataset(arr_as_npz, IMG)
    npz_as_npy = tmp_path / "b.npy"
    with open(npz_as_npy, "wb") as f:
        np.savez(f, x=indexed(2))
    with pytest.raises(InputFileError, match="not an .npy array"):
        load_dataset(npz_as_npy, IMG)


def test_sampling_is_deterministic_and_keeps_order(npz_200):
    a = load_dataset(npz_200, IMG, samples=20, seed=1)
    b = load_dataset(npz_200, IMG, samples=20, seed=1)
    c = load_dataset(npz_200, IMG, samples=20, seed=2)
    picked = [int(s["x"][0, 0, 0, 0]) for s in a]
    assert len(a) == 20 and len(set(picked)) == 20
    assert picked == sorted(picked)
    assert picked == [int(s["x"][0, 0, 0, 0]) for s in b]
    assert a.fingerprint == b.fingerprint
    assert picked != [int(s["x"][0, 0, 0, 0]) for s in c]
    assert a.fingerprint != c.fingerprint


def test_sampling_everything_keeps_everything(npz_200):
    assert len(load_dataset(npz_200, IMG, samples=200, seed=5)) == 200


@pytest.mark.parametrize("samples", [0, -3, 2.5, True])
def test_bad_sample_count(npz_200, samples):
    with pytest.raises(ConfigError, match="--calib-samples"):
        load_dataset(npz_200, IMG, samples=samples)


def test_bad_role(npz_200):
    with pytest.raises(ConfigError, match="role"):
        load_dataset(npz_200, IMG, role="training")


def test_fingerprint_stable_across_processes(npz_200):
    here = load_dataset(npz_200, IMG, samples=30, seed=3).fingerprint
    code = (
        "import sys; from edgec.calibration_data import load_dataset; "
        "from edgec.compiler.types import InputSpec, TensorSpec; "
        "s = InputSpec((TensorSpec('x', (1, 3, 24, 24), 'float32', 'NCHW'),)); "
        "print(load_dataset(sys.argv[1], s, samples=30, seed=3).fingerprint)"
    )
    cmd = [sys.executable, "-c", code, str(npz_200)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_preprocess_is_ignored_for_arrays_but_still_checked(npz_200):
    assert len(load_dataset(npz_200, IMG, preprocess={"mean": [0.5, 0.5, 0.5]})) == 200
    with pytest.raises(ConfigError, match="'means'"):
        load_dataset(npz_200, IMG, preprocess={"means": [0.5]})


def test_samples_on_a_new_leading_axis(tmp_path):
    """[N, 1, 3, 24, 24] holds N samples of a 1x3x24x24 input, one per [i]; the reading is recorded."""
    path = tmp_path / "new_axis.npz"
    np.savez(path, x=indexed(5)[:, None])
    ds = load_dataset(path, IMG)
    assert len(ds) == 5 and ds.samples[3]["x"].shape == (1, 3, 24, 24)
    assert ds.samples[3]["x"][0, 0, 0, 0] == indexed(5)[3, 0, 0, 0]
    assert ds.readings == {"x": "new leading axis"}
    assert load_dataset(tmp_path / "new_axis.npz", IMG).readings["x"] != "batch axis"


def test_state_input_without_batch_axis(tmp_path):
    """A recurrent state [2, 1, 128] (two layers, not a batch): N states stack as [N, 2, 1, 128]; the old
    layout [2N, 1, 128] (pairs of rows) reads the same samples; [N, 2, 128] fits neither reading and is refused
    with a hint that keeps the layers together; one state [2, 1, 128] alone is one sample."""
    spec = spec_of(TensorSpec("x", (1, 576)), TensorSpec("state", (2, 1, 128)))
    rng = np.random.default_rng(0)
    x, state = rng.random((6, 576), dtype=np.float32), rng.random((6, 2, 1, 128), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, state=state)
    ds = load_dataset(tmp_path / "d.npz", spec)
    assert len(ds) == 6 and ds.readings == {"x": "batch axis", "state": "new leading axis"}
    np.testing.assert_array_equal(ds.samples[4]["state"], state[4])
    np.testing.assert_array_equal(ds.samples[4]["x"], x[4:5])
    np.savez(tmp_path / "rows.npz", x=x, state=state.reshape(12, 1, 128))
    rows = load_dataset(tmp_path / "rows.npz", spec)
    assert rows.readings["state"] == "batch axis"
    np.testing.assert_array_equal(rows.samples[4]["state"], state[4])
    np.savez(tmp_path / "bad2.npz", x=x, state=state[:, :, 0])
    with pytest.raises(CalibrationError) as e:
        load_dataset(tmp_path / "bad2.npz", spec)
    assert e.value.hint.startswith("reshape the data for input 'state' to Nx2x1x128")
    assert "Nx2x1x128" in e.value.message and "Nx1x128" in e.value.message
    np.savez(tmp_path / "one.npz", x=x[:1], state=state[0])
    assert len(load_dataset(tmp_path / "one.npz", spec)) == 1
