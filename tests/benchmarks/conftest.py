"""Fixtures: a tiny fp32 classifier and a perturbed copy standing in for a lossy artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the benchmark tests need 'onnx' (pip install 'edgec[onnx]')")
pytest.importorskip(
    "onnxruntime", reason="the benchmark tests need 'onnxruntime' (pip install 'edgec[onnx]')"
)

from bench_models import classifier_weights, make_artifact, save_classifier  # noqa: E402
from edgec.compiler.types import Artifact, Precision  # noqa: E402


@pytest.fixture
def fp32_model(tmp_path: Path) -> Path:
    w, b = classifier_weights()
    return save_classifier(tmp_path / "model.fp32.onnx", w, b)


@pytest.fixture
def perturbed_model(tmp_path: Path) -> Path:
    """The fp32 classifier with noisy weights: a stand-in for a lossy quantized artifact."""
    w, b = classifier_weights()
    rng = np.random.default_rng(123)
    w_noisy = w + rng.standard_normal(w.shape).astype(np.float32) * 0.6
    return save_classifier(tmp_path / "model.int8.onnx", w_noisy, b)


@pytest.fixture
def fp32_artifact(fp32_model: Path) -> Artifact:
    return make_artifact(fp32_model)


@pytest.fixture
def perturbed_artifact(perturbed_model: Path) -> Artifact:
    return make_artifact(perturbed_model, Precision.INT8)
