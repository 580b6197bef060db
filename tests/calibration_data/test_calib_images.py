"""load_dataset on image folders, with real photos from scikit-image's bundled data written as files."""

from __future__ import annotations

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image", reason="image folders need pillow")
skdata = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")

from edgec.calibration_data import Preprocess, load_dataset  # noqa: E402
from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError  # noqa: E402
from edgec.compiler.types import InputSpec, TensorSpec  # noqa: E402

RGB = InputSpec((TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),))


def small(img: np.ndarray) -> PIL.Image:
    return PIL.fromarray(img).resize((64, 64))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five photos in five formats, plus a file that is not an image; names sort as a_, b_, ..."""
    folder = tmp_path_factory.mktemp("photos")
    small(skdata.astronaut()).save(folder / "a_astronaut.png")
    small(skdata.camera()).save(folder / "b_camera.jpg")
    small(skdata.coffee()).save(folder / "c_coffee.bmp")
    small(skdata.chelsea()).save(folder / "d_chelsea.TIFF")
    small(skdata.rocket()).save(folder / "e_rocket.webp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    small(skdata.camera()).save(folder / "sub" / "ignored.png")
    return folder


def solid(folder, name: str, rgb: tuple[int, int, int], size=(32, 32)):
    folder.mkdir(exist_ok=True)
    PIL.new("RGB", size, rgb).save(folder / name)


def test_folder_reads_every_format_in_name_order(photos):
    ds = load_dataset(photos, RGB)
    assert len(ds) == 5 and ds.source == str(photos)
    for s in ds:
        assert s["image"].shape == (1, 3, 32, 32) and s["image"].dtype == np.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    # b_camera is grayscale: its three channels come out equal.
    cam = ds.samples[1]["image"][0]
    assert np.allclose(cam[0], cam[1]) and np.allclose(cam[1], cam[2])
    assert not np.allclose(ds.samples[0]["image"][0, 0], ds.samples[0]["image"][0, 2])


def test_normalisation_channel_order_and_layout(tmp_path):
    solid(tmp_path / "one", "x.png", (10, 20, 30))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = (np.array([10, 20, 30]) / 255 - mean) / std
    ds = load_dataset(tmp_path / "one", RGB, preprocess={"mean": list(mean), "std": list(std)})
    assert np.allclose(ds.samples[0]["image"][0, :, 5, 5], expected, atol=1e-6)

    bgr = load_dataset(tmp_path / "one", RGB, preprocess=Preprocess(channel_order="bgr", scale=1.0))
    assert np.allclose(bgr.samples[0]["image"][0, :, 0, 0], [30, 20, 10])

    nhwc = InputSpec((TensorSpec("image", (1, 16, 16, 3), "float32", "NHWC"),))
    ds = load_dataset(tmp_path / "one", nhwc, preprocess={"scale": 1.0})
    assert ds.samples[0]["image"].shape == (1, 16, 16, 3)
    assert np.allclose(ds.samples[0]["image"][0, 3, 3], [10, 20, 30])


def test_grayscale_for_one_channel_inputs(photos):
    gray = InputSpec((TensorSpec("image", (1, 1, 20, 24), "float32", "NCHW"),))
    ds = load_dataset(photos, gray, samples=2, seed=0, preprocess={"mean": 0.5, "std": [0.5]})
    assert len(ds) == 2 and ds.samples[0]["image"].shape == (1, 1, 20, 24)
    assert -1.0 <= ds.samples[0]["image"].min() and ds.samples[0]["image"].max() <= 1.0


def test_dynamic_size_needs_resize(photos):
    dyn = InputSpec((TensorSpec("image", ("N", 3, "H", "W"), "float32"),))
    with pytest.raises(ConfigError, match="'image'.*dynamic") as e:
        load_dataset(photos, dyn)
    assert "resize" in e.value.hint
    ds = load_dataset(photos, dyn, preprocess={"resize": [12, 20]})
    assert ds.samples[0]["image"].shape == (1, 3, 12, 20)
    assert load_dataset(photos, dyn, preprocess={"resize": 8}).samples[0]["image"].shape == (1, 3, 8, 8)


def test_sampling_picks_files_deterministically(photos):
    a = load_dataset(photos, RGB, samples=3, seed=4)
    b = load_dataset(photos, RGB, samples=3, seed=4)
    assert a.fingerprint == b.fingerprint


def test_layout_that_does_not_fit_the_input(photos):
    with pytest.raises(CalibrationError) as e:
        load_dataset(photos, RGB, preprocess={"layout": "NHWC"})
    assert "'image'" in str(e.value) and str(photos) in str(e.value)


def test_multi_input_model(photos):
    spec = InputSpec((TensorSpec("a", (1, 3, 8, 8)), TensorSpec("b", (1, 3, 8, 8))))
    with pytest.raises(CalibrationError, match="single input") as e:
        load_dataset(photos, spec)
    assert str(photos) in str(e.value) and "a, b" in str(e.value)


def test_non_image_input(photos):
    with pytest.raises(CalibrationError, match="4-D") as e:
        load_dataset(photos, InputSpec((TensorSpec("tokens", (1, 16), "int64"),)))
    assert "'tokens'" in str(e.value)


def test_four_channel_input(photos):
    with pytest.raises(CalibrationError, match="4 channels"):
        load_dataset(photos, InputSpec((TensorSpec("image", (1, 4, 8, 8)),)))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("nothing here")
    with pytest.raises(CalibrationError, match="no images") as e:
        load_dataset(tmp_path / "empty", RGB)
    assert str(tmp_path / "empty") in str(e.value)


def test_corrupt_image(tmp_path):
    solid(tmp_path / "imgs", "a.png", (1, 2, 3))
    good = (tmp_path / "imgs" / "a.png").read_bytes()
    (tmp_path / "imgs" / "b.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "imgs" / "c.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(InputFileError) as e:
        load_dataset(tmp_path / "imgs", RGB)
    assert "b.png" in str(e.value)


def test_unknown_preprocess_key(photos):
    with pytest.raises(ConfigError, match="'normalize'") as e:
        load_dataset(photos, RGB, preprocess={"normalize": True})
    assert "channel_order" in e.value.hint


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"resize": [0, 4]}, "resize"),
        ({"resize": "224"}, "resize"),
        ({"std": [1, 0, 1]}, "std"),
        ({"mean": "imagenet"}, "mean"),
        ({"scale": -1}, "scale"),
        ({"layout": "CHW"}, "layout"),
        ({"channel_order": "RGBA"}, "channel_order"),
    ],
)
def test_bad_preprocess_values(options, key):
    with pytest.raises(ConfigError, match=key):
        Preprocess.from_dict(options)


def test_mean_with_wrong_channel_count(photos):
    with pytest.raises(ConfigError, match="mean has 2 values") as e:
        load_dataset(photos, RGB, preprocess={"mean": [0.1, 0.2]})
    assert "'image'" in str(e.value)


def test_preprocess_round_trips_through_dict():
    pre = Preprocess.from_dict({"resize": [224, 224], "mean": [0.485, 0.456, 0.406], "layout": "nhwc"})
    assert pre.layout == "NHWC" and pre.resize == (224, 224)
    assert Preprocess.from_dict(pre.to_dict()) == pre
