"""``load_dataset``: a calibration or evaluation set from an .npz, an .npy, an image folder or a callable."""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgec.calibration_data.arrays import check_stacked, conform, per_sample, take_sample
from edgec.calibration_data.images import IMAGE_SUFFIXES, ImageFolder, Preprocess
from edgec.calibration_data.labels import load_labels
from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError
from edgec.compiler.types import ArrayCalibrationSet, Feeds, InputSpec, TensorSpec

# role -> (the option that names the data, the option that caps the sample count)
ROLES = {"calibration": ("--calib", "--calib-samples"), "evaluation": ("--data", "--samples")}

_CALLABLE = re.compile(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*")


class EvaluationSet(ArrayCalibrationSet):
    """An ArrayCalibrationSet with one class label per sample (``labels[i]`` goes with ``samples[i]``)."""

    def __init__(self, samples: Iterable[Feeds], source: str = "<memory>", labels: np.ndarray | None = None):
        super().__init__(samples, source)
        self.labels = labels


def load_dataset(
    source: str | Path,
    spec: InputSpec,
    *,
    samples: int | None = None,
    seed: int = 0,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    role: str = "calibration",
    labels: str | Path | None = None,
) -> ArrayCalibrationSet:
    """Read calibration or evaluation data and check it against the model's inputs.

    Args:
        source: one of
            - ``.npz``: one array per input, named after it, samples stacked on the first axis
              (a 200x3x24x24 array feeds a 1x3x24x24 input 200 samples). A single-input model also takes
              an .npz whose only array has another name.
            - ``.npy``: the same, for a single-input model.
            - a folder of images (png, jpg, jpeg, bmp, gif, tif, tiff, webp; not its sub-folders), read in
              name order through ``preprocess``; single-input models with a 4-D image input only.
            - ``module:function`` or ``path/to/file.py:function``: called without arguments, it returns a
              finite iterable whose items are ``{input_name: array}``, one array (single-input models) or a
              tuple/list of arrays in input order. An item is one sample; its batch axis may be left out,
              and an item with several rows along it is split into samples like an .npz array.
        spec: the model's inputs; every sample is checked against it.
        samples: how many samples to keep. When the source has more, that many are drawn at random
            without replacement (``numpy.random.default_rng(seed)``), kept in source order.
        seed: the seed of that draw: the same seed gives the same subset.
        preprocess: for image folders (ignored for array sources, so one recipe section can serve a folder
            for calibration and an .npz for evaluation); a dict is parsed with ``Preprocess.from_dict``.
        role: "calibration" or "evaluation": names the options (``--calib``/``--calib-samples`` or
            ``--data``/``--samples``) that messages point to.
        labels: a labels file (see ``load_labels``) with one label per sample of the whole source; the
            result is then an ``EvaluationSet`` whose ``labels`` went through the same sampling as the data.

    Returns:
        An ArrayCalibrationSet (an EvaluationSet when ``labels`` is given) whose samples are
        ``{input_name: array}`` in the input's dtype with a leading batch axis of 1 (or the input's fixed
        batch size), and whose ``source`` is ``str(source)``.

    Raises:
        InputFileError: the source is missing, of an unknown kind, or unreadable.
        CalibrationError: the data does not fit the inputs (names, shapes, dtypes, NaN/Inf), is empty, or
            has fewer samples than asked for.
        ConfigError: bad options (role, samples, preprocess keys, a callable that cannot be imported).
    """
    if role not in ROLES:
        raise ConfigError(f"unknown data role '{role}'", hint=f"use one of: {', '.join(ROLES)}")
    option, samples_option = ROLES[role]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0):
        raise ConfigError(f"{samples_option} must be a positive integer, got {samples!r}")
    if not spec.inputs:
        raise ConfigError("the model declares no inputs, so there is nothing to feed calibration data to")
    pre = Preprocess.coerce(preprocess)
    name = str(source)
    reader = _open(source, spec, pre, option)
    total = len(reader)
    if total == 0:
        raise CalibrationError(f"{name}: no samples", hint=f"pass {option} data with at least one sample")
    label_array = load_labels(labels, expected=total) if labels is not None else None
    if samples is not None and samples > total:
        raise CalibrationError(
            f"{name}: {total} samples, fewer than the {samples} asked for",
            hint=f"lower {samples_option} to {total} or less, or add data",
        )
    chosen = select(total, samples, seed)
    feeds = []
    for i in chosen.tolist():
        raw = reader.sample(i)
        feeds.append({t.name: conform(raw[t.name], t, name, i) for t in spec.inputs})
    dataset = (ArrayCalibrationSet(feeds, source=name) if label_array is None
               else EvaluationSet(feeds, source=name, labels=label_array[chosen]))
    dataset.readings = dict(getattr(reader, "readings", {}))
    return dataset


def select(total: int, samples: int | None, seed: int) -> np.ndarray:
    """Indices to keep: all, or ``samples`` of them drawn with ``default_rng(seed)``, in ascending order."""
    if samples is None or samples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=samples, replace=False))


class _Reader(Protocol):
    def __len__(self) -> int: ...

    def sample(self, index: int) -> Feeds: ...


class _StackedReader:
    """Arrays that stack samples on their first axis, one per input (from .npz, .npy or a callable)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], spec: InputSpec, source: str, what: str = "array"):
        self.arrays = dict(arrays)
        self.spec = spec
        checked = {
            t.name: check_stacked(self.arrays[t.name], t, source, f"{what} for input '{t.name}'")
            for t in spec.inputs
        }
        counts = {name: count for name, (count, _) in checked.items()}
        self.readings = {name: how for name, (_, how) in checked.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{k}': {v}" for k, v in counts.items())
            raise CalibrationError(
                f"{source}: the inputs have different sample counts ({listed})",
                hint="give every input the same number of samples",
            )
        self.count = next(iter(counts.values()))

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> Feeds:
        return {t.name: take_sample(self.arrays[t.name], t, index, self.readings[t.name]) for t in self.spec.inputs}


class _ImageReader:
    def __init__(self, folder: ImageFolder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def sample(self, index: int) -> Feeds:
        return {self.folder.tensor.name: self.folder.read(index)}


class _ListReader:
    def __init__(self, feeds: list[Feeds], readings: dict[str, str]):
        self.feeds = feeds
        self.readings = readings

    def __len__(self) -> int:
        return len(self.feeds)

    def sample(self, index: int) -> Feeds:
        return self.feeds[index]


def _open(source: str | Path, spec: InputSpec, pre: Preprocess, option: str) -> _Reader:
    text = str(source)
    hint = f"pass {option} an .npz/.npy file, a folder of images, or module:function"
    path = Path(source)
    if path.is_dir():
        if len(spec.inputs) != 1:
            raise CalibrationError(
                f"{text}: an image folder feeds a single input, but the model has inputs "
                f"{', '.join(spec.input_names)}",
                hint=f"pass {option} an .npz with one array per input",
            )
        folder = ImageFolder(path, spec.inputs[0], pre, text)
        if not len(folder):
            raise CalibrationError(
                f"{text}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
                "sub-folders are not searched)",
                hint=f"pass {option} a folder that holds the image files directly",
            )
        return _ImageReader(folder)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".npz":
            return _StackedReader(_read_npz(path, spec, hint), spec, text)
        if suffix == ".npy":
            return _StackedReader(_read_npy(path, spec, hint, option), spec, text)
        raise InputFileError(f"{text}: unknown data file extension '{path.suffix}'", hint=hint)
    if isinstance(source, str) and suffix not in (".npz", ".npy") and _CALLABLE.fullmatch(source):
        return _ListReader(*_call(source, spec, option))
    raise InputFileError(f"{option} '{text}' does not exist", hint=hint)


# What numpy raises for a truncated, corrupt or non-numpy file.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path, spec: InputSpec, hint: str) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise InputFileError(f"cannot read '{path}': {exc}", hint=hint) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputFileError(
            f"{path}: not an .npz archive (it holds a single array)", hint="rename it to .npy"
        )
    try:
        with z:
            present = list(z.files)
            if not present:
                raise CalibrationError(f"{path}: no arrays (empty .npz)", hint=hint)
            names = spec.input_names
            missing = [n for n in names if n not in present]
            if missing and len(names) == 1 and len(present) == 1:
                return {names[0]: z[present[0]]}  # one input, one array: the name does not matter
            if missing:
                raise CalibrationError(
                    f"{path}: no array for input{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(m) for m in missing)} (arrays present: {', '.join(present)})",
                    hint=f"save one array per model input, named after it: {', '.join(names)}",
                )
            return {n: z[n] for n in names}
    except _READ_ERRORS as exc:
        raise InputFileError(f"cannot read '{path}': {exc}", hint=hint) from None


def _read_npy(path: Path, spec: InputSpec, hint: str, option: str) -> dict[str, np.ndarray]:
    if len(spec.inputs) != 1:
        raise CalibrationError(
            f"{path}: an .npy holds one array, but the model has inputs {', '.join(spec.input_names)}",
            hint=f"pass {option} an .npz with one array per input, named after it",
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise InputFileError(f"cannot read '{path}': {exc}", hint=hint) from None
    if not isinstance(arr, np.ndarray):
        raise InputFileError(f"{path}: not an .npy array (it is an .npz archive)", hint="rename it to .npz")
    return {spec.inputs[0].name: arr}


def _call(text: str, spec: InputSpec, option: str) -> tuple[list[Feeds], dict[str, str]]:
    from edgec.compiler.modelio import import_callable

    result = import_callable(text, option)()
    try:
        items = iter(result)
    except TypeError:
        raise CalibrationError(
            f"{text} returned {type(result).__name__}, not an iterable of samples",
            hint="return a list or generator of {input_name: array} dicts, arrays, or tuples of arrays",
        ) from None
    feeds: list[Feeds] = []
    readings: dict[str, str] = {}
    for k, item in enumerate(items):
        arrays = {}
        for t, value in zip(spec.inputs, _item_values(item, spec, text, k)):
            arr = _to_numpy(value, t, text, k)
            if t.shape and arr.ndim == len(t.shape) - 1 and per_sample(t) == 1:
                arr = arr[None]  # one sample given without its batch axis
            arrays[t.name] = arr
        reader = _StackedReader(arrays, spec, text, what=f"item {k}")
        feeds.extend(reader.sample(j) for j in range(len(reader)))
        readings.update(reader.readings)
    return feeds, readings


def _item_values(item: Any, spec: InputSpec, text: str, k: int) -> list[Any]:
    names = spec.input_names
    if isinstance(item, Mapping):
        missing = [n for n in names if n not in item]
        if missing:
            raise CalibrationError(
                f"{text}: item {k} has no value for input{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)} "
                f"(keys present: {', '.join(map(str, item)) or 'none'})",
                hint=f"key each item by the model's input names: {', '.join(names)}",
            )
        return [item[n] for n in names]
    if isinstance(item, (tuple, list)):
        if len(item) != len(names):
            raise CalibrationError(
                f"{text}: item {k} holds {len(item)} arrays, but the model has {len(names)} inputs "
                f"({', '.join(names)})",
                hint="give one array per input, in input order, or a dict keyed by input name",
            )
        return list(item)
    if len(names) != 1:
        raise CalibrationError(
            f"{text}: item {k} is a single array, but the model has inputs {', '.join(names)}",
            hint="yield dicts keyed by input name, or tuples in input order",
        )
    return [item]


def _to_numpy(value: Any, tensor: TensorSpec, text: str, k: int) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise CalibrationError(
            f"{text}: item {k} for input '{tensor.name}' is not a numeric array ({type(value).__name__})",
            hint="yield numpy arrays (or tensors) of numbers",
        )
    return arr
