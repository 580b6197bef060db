from __future__ import annotations

import numpy as np
import pytest

from edgec.compiler.errors import ConfigError
from edgec.compiler.types import ArrayCalibrationSet, InputSpec, Precision, TensorSpec


def test_parse_input_spec():
    t = TensorSpec.parse("images:Nx3x224x224:float32")
    assert t.shape == ("N", 3, 224, 224) and t.dtype == "float32" and t.layout == "NCHW" and t.is_dynamic
    tok = TensorSpec.parse("tokens:1x128:int64")
    assert tok.dtype == "int64" and tok.layout is None and not tok.is_dynamic
    assert TensorSpec.parse("x:1x224x224x3").layout == "NHWC"


@pytest.mark.parametrize("text", ["x", "x:", ":1x2", "x:1xx2", "x:1x-2", "x:1x2:complex", "x:0x3"])
def test_bad_input_specs_are_config_errors(text):
    with pytest.raises(ConfigError):
        TensorSpec.parse(text)


def test_precision_parse():
    assert Precision.parse("INT8") is Precision.INT8
    with pytest.raises(ConfigError) as info:
        Precision.parse("int4")
    assert "fp32, fp16, int8" in info.value.hint


def test_spec_round_trip_and_accepts():
    spec = InputSpec((TensorSpec.parse("x:Nx3x8x8"),), (TensorSpec("y", (1, 10)),))
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.inputs[0].accepts((7, 3, 8, 8))
    assert not spec.inputs[0].accepts((7, 1, 8, 8))


def test_fingerprint_depends_on_content_only():
    a = [{"x": np.ones((1, 2), np.float32)}, {"x": np.zeros((1, 2), np.float32)}]
    b = [{"x": np.ones((1, 2), np.float32)}, {"x": np.zeros((1, 2), np.float32)}]
    assert ArrayCalibrationSet(a).fingerprint == ArrayCalibrationSet(b).fingerprint
    b[1]["x"] = b[1]["x"] + 1e-3
    assert ArrayCalibrationSet(a).fingerprint != ArrayCalibrationSet(b).fingerprint
    assert ArrayCalibrationSet(a).stacked()["x"].shape == (2, 2)
