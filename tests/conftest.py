"""Shared fixtures: an isolated build cache, the trained digits CNN and its data, small models of every kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cliutil import run_edgec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own build cache, so cache hits are only ever the test's own."""
    cache = tmp_path_factory.mktemp("edgec-cache")
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def digits_assets(tmp_path_factory):
    """The demo's trained CNN (.pt2), calibration and evaluation sets, trained once per test session."""
    from edgec.demo import write_demo

    folder = tmp_path_factory.mktemp("digits")
    paths = write_demo(folder, epochs=12)
    return paths


@pytest.fixture(scope="session")
def digits_model():
    from edgec.demo import train_digits_cnn

    model, data = train_digits_cnn(epochs=12)
    return model, data


@pytest.fixture
def edgec_cli():
    return run_edgec


def save_exported(model, example, path: Path) -> Path:
    import torch

    torch.export.save(torch.export.export(model.eval(), example), str(path))
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def copy_tree():
    return shutil.copytree


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CNN as an ExportedProgram (input x:1x1x8x8) and an 8-sample calib.npz, in one folder."""
    import torch

    import zoo_models

    d = tmp_path_factory.mktemp("tiny")
    path = d / "tiny.pt2"
    torch.export.save(torch.export.export(zoo_models.tiny_cnn().eval(), (torch.zeros(1, 1, 8, 8),)), str(path))
    np.savez(d / "calib.npz", x=np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    return d


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train small models on one torch thread: fastest for them, and a busy machine makes several threads spin."""
    from edgec.compiler.modelio import one_torch_thread as single_thread

    with single_thread():
        yield
