"""Every checkpoint format loads to the same model, and every bad checkpoint is refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo_models
from edgec.compiler.errors import CheckpointError, ConfigError, InputFileError
from edgec.compiler.modelio import torch_run
from edgec.compiler.stages.load import detect_format, load_checkpoint
from edgec.compiler.types import TensorSpec
from usererrors import raises_user_error

X = TensorSpec.parse("x:1x1x8x8")
FACTORY = "zoo_models:tiny_cnn"


@pytest.fixture
def model():
    return zoo_models.tiny_cnn().eval()


@pytest.fixture
def feeds():
    return {"x": np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)}


def _same(loaded, model, feeds):
    expected = model(torch.from_numpy(feeds["x"])).detach().numpy()
    got = torch_run(loaded.module, feeds, loaded.spec.input_names)[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_exported_program(tmp_path, model, feeds):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(feeds["x"]),)), str(path))
    loaded = load_checkpoint(path)
    assert loaded.format == "exported-program"
    assert loaded.spec.inputs[0].shape == (1, 1, 8, 8)
    assert loaded.spec.outputs[0].shape == (1, 10)
    _same(loaded, model, feeds)


def test_torchscript_needs_input_spec(tmp_path, model, feeds):
    path = tmp_path / "m.pt"
    torch.jit.trace(model, torch.from_numpy(feeds["x"])).save(str(path))
    assert detect_format(path) == "torchscript"
    with raises_user_error(ConfigError, "--input"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, (X,))
    _same(loaded, model, feeds)


@pytest.mark.parametrize("wrap", ["plain", "training", "lightning"])
def test_state_dict_with_factory(tmp_path, model, feeds, wrap):
    state = model.state_dict()
    if wrap == "training":
        state = {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}
    elif wrap == "lightning":
        state = {"state_dict": {f"model.{k}": v for k, v in state.items()}}
    path = tmp_path / "m.pth"
    torch.save(state, str(path))
    loaded = load_checkpoint(path, (X,), model_factory=FACTORY)
    assert loaded.format == "state-dict"
    _same(loaded, model, feeds)


def test_state_dict_without_factory_names_the_option(tmp_path, model):
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), str(path))
    with raises_user_error(ConfigError, "--model-factory"):
        load_checkpoint(path, (X,))


def test_state_dict_that_does_not_fit_the_factory(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, str(path))
    with raises_user_error(CheckpointError, "do not fit"):
        load_checkpoint(path, (X,), model_factory=FACTORY)


def test_safetensors_with_factory(tmp_path, model, feeds):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_checkpoint(path, (X,), model_factory=FACTORY)
    assert loaded.format == "safetensors"
    _same(loaded, model, feeds)


def test_pickled_module_refused_unless_trusted(tmp_path, model, feeds):
    path = tmp_path / "m.pt"
    torch.save(model, str(path))
    with raises_user_error(CheckpointError, "--trust-checkpoint"):
        load_checkpoint(path, (X,))
    loaded = load_checkpoint(path, (X,), trust_checkpoint=True)
    assert loaded.format == "pickled-module"
    _same(loaded, model, feeds)


@pytest.mark.parametrize("suffix", [".pt2", ".pth", ".onnx", ".safetensors"])
def test_truncated_checkpoint(tmp_path, model, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt2":
        torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(good))
    elif suffix == ".pth":
        torch.save(model.state_dict(), str(good))
    elif suffix == ".onnx":
        zoo_models.onnx_with_constant_weights(good)
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(good))
    bad = tmp_path / f"bad{suffix}"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad, (X,), model_factory=FACTORY)
    assert str(bad) in info.value.message


def test_missing_checkpoint(tmp_path):
    with raises_user_error(InputFileError, "does not exist"):
        load_checkpoint(tmp_path / "nope.pt2")


def test_input_shape_the_model_rejects(tmp_path, model):
    path = tmp_path / "m.pt"
    torch.jit.script(model).save(str(path))
    with raises_user_error(CheckpointError, "rejected inputs x:1x3x8x8"):
        load_checkpoint(path, (TensorSpec.parse("x:1x3x8x8"),))


def test_onnx_failing_the_checker(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with raises_user_error(CheckpointError, "fails the ONNX checker"):
        load_checkpoint(path)


def test_onnx_spec_and_declared_shape_mismatch(tmp_path):
    path = tmp_path / "m.onnx"
    zoo_models.onnx_with_constant_weights(path)
    loaded = load_checkpoint(path)
    assert loaded.spec.inputs[0].shape == ("batch", 1, 8, 8)
    with raises_user_error(CheckpointError, "expects batchx1x8x8"):
        load_checkpoint(path, (TensorSpec.parse("x:1x3x8x8"),))
    with raises_user_error(ConfigError, "not an input"):
        load_checkpoint(path, (TensorSpec.parse("images:1x1x8x8"),))


def test_factory_module_that_raises_is_a_config_error(tmp_path):
    bad = tmp_path / "badfactory.py"
    bad.write_text("raise RuntimeError('boom')\ndef f():\n    pass\n")
    path = tmp_path / "m.pth"
    torch.save(zoo_models.tiny_cnn().state_dict(), str(path))
    with raises_user_error(ConfigError, "RuntimeError: boom"):
        load_checkpoint(path, (X,), model_factory=f"{bad}:f")
