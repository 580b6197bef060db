"""PruneStage: torch-pruning on CNNs (BatchNorm, residuals, depthwise, linear head) and a transformer encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed (pip install 'edgec[prune]')")

from torch import nn  # noqa: E402

import zoo  # noqa: E402
from edgec.compiler.cache import BuildCache  # noqa: E402
from edgec.compiler.context import BuildContext  # noqa: E402
from edgec.compiler.errors import ConfigError, PruneError  # noqa: E402
from edgec.compiler.modelio import torch_run  # noqa: E402
from edgec.compiler.onnxutil import ort_session  # noqa: E402
from edgec.compiler.stages.export import ExportStage, VerifyStage  # noqa: E402
from edgec.compiler.stages.load import load_checkpoint  # noqa: E402
from edgec.compiler.stages.prune import PruneStage, count_macs_params, rebuild_pruned  # noqa: E402
from edgec.compiler.types import (  # noqa: E402
    ArrayCalibrationSet,
    InputSpec,
    LoadedModel,  # noqa: E402
    TensorSpec,
)
from usererrors import raises_user_error  # noqa: E402


class ResidualDW(nn.Module):
    """A ResNet/MobileNet-shaped CNN: BatchNorm, a residual block, a depthwise-separable block, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        x = self.down(self.pw(self.dw(x)))
        return self.head(x.mean((2, 3)))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class NumpyInside(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)


class Detached(nn.Module):
    def __init__(self, middle: nn.Module | None = None) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.middle = middle or nn.Identity()
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.middle(self.a(x))
        if isinstance(self.middle, nn.Identity):
            y = y.detach()
        return self.head(self.b(y).mean((2, 3)))


class SubPixel(nn.Module):
    """A sub-pixel upsampler: pixel_shuffle regroups channels into space, which torch-pruning cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 16, 3, padding=1)
        self.refine = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = nn.functional.pixel_shuffle(self.up(x), 2)
        return self.head(self.refine(x).mean((2, 3)))


def _settled(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Non-trivial BatchNorm statistics, so pruning decisions and outputs are not degenerate."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape[1:]))
    return model.eval()


def _loaded(model: nn.Module, shape: tuple[int, ...], tmp: Path) -> LoadedModel:
    from edgec.compiler.stages.load import _probe

    spec = _probe(tmp / "model.pt", model, (TensorSpec("input", shape, "float32"),))
    return LoadedModel("torch", spec, tmp / "model.pt", "pickled-module", module=model)


def _ctx(tmp: Path) -> BuildContext:
    lines: list[str] = []
    ctx = BuildContext(work_dir=tmp, cache=BuildCache(tmp / "cache", enabled=False), report=lines.append)
    ctx.lines = lines  # type: ignore[attr-defined]
    return ctx


def _run(stage: PruneStage, loaded: LoadedModel, tmp: Path, **inputs):
    out = tmp / "prune"
    out.mkdir(exist_ok=True)
    ctx = _ctx(tmp)
    return stage.run({"model": loaded, **inputs}, out, ctx), out, ctx


@pytest.fixture
def cnn(tmp_path):
    return _loaded(_settled(ResidualDW(), (1, 3, 16, 16)), (1, 3, 16, 16), tmp_path)


def test_prune_macs_removes_the_fraction_and_exports(cnn, tmp_path):
    before = [p.clone() for p in cnn.module.parameters()]
    pruned, out, ctx = _run(PruneStage(macs=0.5), cnn, tmp_path)
    f = pruned.figures
    macs, params = count_macs_params(pruned.module, (torch.randn(1, 3, 16, 16),))
    assert macs == f["macs_after"] and params == f["params_after"]
    assert f["macs_after"] <= 0.5 * f["macs_before"], f
    assert f["macs_after"] >= 0.35 * f["macs_before"], "iterative pruning overshot the MAC budget"
    assert f["params_after"] < f["params_before"] and f["protected_outputs"] == ["head"]
    assert pruned.module.head.out_features == 10 and pruned.module.dw[0].groups == pruned.module.dw[0].out_channels
    # the residual sum keeps stem and block outputs the same width
    assert pruned.module.stem[0].out_channels == pruned.module.conv2.out_channels < 16
    # the input model is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.module.parameters()))
    feeds = cnn.spec.example_feeds()
    assert torch_run(pruned.module, feeds, ["input"])[0].shape == (1, 10)
    assert any(line.startswith("[prune] l1: MACs") for line in ctx.lines)

    (tmp_path / "onnx").mkdir()
    onnx_model = ExportStage(source="pruned_model").run({"pruned_model": pruned}, tmp_path / "onnx", ctx)
    got = ort_session(onnx_model.path).run(None, feeds)[0]
    ref = torch_run(pruned.module, feeds, ["input"])[0]
    assert np.abs(got - ref).max() < 1e-4
    check = VerifyStage(source="pruned_model").run(
        {"pruned_model": pruned, "onnx": onnx_model, "calibration": None}, tmp_path, ctx)
    assert check["max_abs_diff"] < 1e-4


def test_prune_ratio_removes_that_fraction_of_channels(cnn, tmp_path):
    pruned, _, _ = _run(PruneStage(ratio=0.5, criterion="l2"), cnn, tmp_path)
    assert pruned.figures["channels_removed"] == pytest.approx(0.5, abs=0.05)
    assert pruned.module.pw[0].out_channels == 16 and pruned.module.head.in_features == 16


def test_protect_keeps_the_matching_layers(cnn, tmp_path):
    pruned, _, _ = _run(PruneStage(ratio=0.5, protect=("pw.*",)), cnn, tmp_path)
    assert pruned.module.pw[0].out_channels == 32
    assert pruned.module.down[0].out_channels == 16
    assert "pw.0" in pruned.figures["protected"]


def test_cache_round_trip_is_exact_and_rebuilds_a_trainable_module(cnn, tmp_path):
    stage = PruneStage(macs=0.4, global_pruning=True)
    pruned, out, _ = _run(stage, cnn, tmp_path)
    restored = stage.restore(stage.save(pruned, out), out)
    feeds = cnn.spec.example_feeds(seed=3)
    ref = torch_run(pruned.module, feeds, ["input"])[0]
    assert np.array_equal(torch_run(restored.module, feeds, ["input"])[0], ref)
    assert restored.figures == pruned.figures and not restored.trainable
    rebuilt = rebuild_pruned(cnn.module, restored)
    assert np.array_equal(torch_run(rebuilt, feeds, ["input"])[0], ref)
    rebuilt.train()  # a real nn.Module again, unlike the ExportedProgram's
    assert rebuilt.stem[0].out_channels == pruned.module.stem[0].out_channels


def test_taylor_uses_the_data(cnn, tmp_path):
    rng = np.random.default_rng(0)
    data = ArrayCalibrationSet([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(32)])
    stage = PruneStage(ratio=0.3, criterion="taylor")
    assert stage.reads == ("model", "train_data")
    pruned, _, _ = _run(stage, cnn, tmp_path, train_data=data)
    assert pruned.figures["criterion"] == "taylor" and pruned.figures["channels_removed"] > 0.25


def test_transformer_encoder_mlp_and_attention_width(tmp_path):
    loaded = _loaded(_settled(TinyEncoder(), (1, 6, 12)), (1, 6, 12), tmp_path)
    pruned, _, ctx = _run(PruneStage(ratio=0.5), loaded, tmp_path)
    layer = pruned.module.encoder.layers[0]
    assert layer.linear1.out_features == 32 and layer.self_attn.embed_dim == 16
    assert any("MultiheadAttention): keeps its 4 heads" in s for s in pruned.figures["skipped"])
    assert any("skipped" in line for line in ctx.lines)
    feeds = loaded.spec.example_feeds()
    assert torch_run(pruned.module, feeds, ["input"])[0].shape == (1, 5)
    (tmp_path / "onnx").mkdir()
    onnx_model = ExportStage(source="pruned_model").run({"pruned_model": pruned}, tmp_path / "onnx", ctx)
    got = ort_session(onnx_model.path).run(None, feeds)[0]
    assert np.abs(got - torch_run(pruned.module, feeds, ["input"])[0]).max() < 1e-4


def test_untraceable_module_is_named(tmp_path):
    loaded = _loaded(Detached(NumpyInside()).eval(), (1, 3, 8, 8), tmp_path)
    with raises_user_error(PruneError, r"cannot trace module 'middle' \(NumpyInside\).*numpy"):
        _run(PruneStage(ratio=0.5), loaded, tmp_path)


def test_detached_layer_is_skipped_with_a_line(tmp_path):
    loaded = _loaded(Detached().eval(), (1, 3, 8, 8), tmp_path)
    pruned, _, _ = _run(PruneStage(ratio=0.5), loaded, tmp_path)
    assert pruned.module.a.out_channels == 8 and pruned.module.b.out_channels == 4
    assert any(s.startswith("a (Conv2d): not reached") for s in pruned.figures["skipped"])


def test_protect_pattern_matching_nothing_is_refused(cnn, tmp_path):
    with raises_user_error(ConfigError, r"--protect 'backbone\.\*' matches no module.*\n.*stem"):
        _run(PruneStage(ratio=0.5, protect=("backbone.*",)), cnn, tmp_path)


@pytest.mark.parametrize("kw", [{"ratio": 0.0}, {"ratio": 1.0}, {"macs": 1.5}, {"ratio": -0.2}])
def test_fraction_outside_zero_one_is_refused(kw):
    option = "--prune" if "ratio" in kw else "--prune-macs"
    with raises_user_error(ConfigError, f"{option} .*between 0 and 1"):
        PruneStage(**kw)


def test_exported_program_needs_a_factory(digits_assets, tmp_path):
    loaded = load_checkpoint(digits_assets["checkpoint"])
    with raises_user_error(ConfigError, r"ExportedProgram.*\n.*--model-factory"):
        _run(PruneStage(ratio=0.5), loaded, tmp_path)
    pruned, _, _ = _run(PruneStage(ratio=0.5, model_factory="edgec.demo:digits_cnn"), loaded, tmp_path)
    assert pruned.module.stem[0].out_channels == 8


def test_onnx_model_is_refused(tmp_path):
    spec = InputSpec((TensorSpec("input", (1, 3), "float32"),))
    loaded = LoadedModel("onnx", spec, tmp_path / "m.onnx", "onnx", onnx_path=tmp_path / "m.onnx")
    with raises_user_error(ConfigError, r"pruning needs a PyTorch model.*ONNX"):
        _run(PruneStage(ratio=0.5), loaded, tmp_path)


def _cascade(net: str, tmp: Path) -> LoadedModel:
    torch.manual_seed(0)
    cls = getattr(zoo, net)
    return _loaded(cls().eval(), tuple(cls.example_inputs[0].shape), tmp)


def _labelled_noise(shape: tuple[int, ...], count: int = 32) -> ArrayCalibrationSet:
    rng = np.random.default_rng(0)
    data = ArrayCalibrationSet([{"input": rng.random(shape, dtype=np.float32)} for _ in range(count)])
    data.labels = rng.integers(0, 2, count)  # face / no face
    return data


@pytest.mark.parametrize("net, criterion, heads", [
    # permute(0, 3, 2, 1) before flatten + Linear, per-channel PReLU, a Softmax head beside a box head
    ("CascadeRNet", "taylor", ["dense5_2", "dense5_1"]),
    ("CascadeRNet", "l1", ["dense5_2", "dense5_1"]),
    # fully convolutional: a Softmax over a 2-channel conv
    ("CascadePNet", "taylor", ["conv4_2", "conv4_1"]),
    ("CascadeONet", "taylor", ["dense6_2", "dense6_3", "dense6_1"]),
])
def test_face_cascade_loses_half_its_macs_and_keeps_its_outputs(net, criterion, heads, tmp_path):
    loaded = _cascade(net, tmp_path)
    shape = loaded.spec.inputs[0].concrete_shape()
    extra = {"train_data": _labelled_noise(shape)} if criterion == "taylor" else {}
    pruned, _, ctx = _run(PruneStage(macs=0.5, criterion=criterion), loaded, tmp_path, **extra)
    f = pruned.figures
    assert f["macs_after"] <= 0.5 * f["macs_before"], f
    # the layers behind the Softmax are found as output layers too, and keep their channels
    assert f["protected_outputs"] == heads
    assert all(f["channels"][h][0] == f["channels"][h][1] for h in heads)
    assert all(after < before for name, (before, after) in f["channels"].items() if name not in heads)
    feeds = loaded.spec.example_feeds()
    ref = torch_run(loaded.module, feeds, ["input"])
    got = torch_run(pruned.module, feeds, ["input"])
    assert [g.shape for g in got] == [r.shape for r in ref]

    (tmp_path / "onnx").mkdir()
    onnx_model = ExportStage(source="pruned_model").run({"pruned_model": pruned}, tmp_path / "onnx", ctx)
    for a, b in zip(ort_session(onnx_model.path).run(None, feeds), got):
        assert np.abs(a - b).max() < 1e-4


def test_permute_before_flatten_prunes_the_matching_linear_columns(tmp_path):
    """Channel c of an NHWC flatten feeds Linear columns c, c + C, c + 2C, ...: with half of conv3's channels
    dead (zero weights in and out), pruning exactly them must leave the outputs unchanged."""
    loaded = _cascade("CascadeRNet", tmp_path)
    model = loaded.module
    dead = torch.arange(0, 64, 2)
    with torch.no_grad():
        model.conv3.weight[dead] = 0
        model.conv3.bias[dead] = 0
        model.prelu3.weight[dead] = 0
        model.dense4.weight[:, (torch.arange(9)[:, None] * 64 + dead).flatten()] = 0
    pruned, _, _ = _run(PruneStage(ratio=0.5, protect=("conv1", "conv2", "dense4")), loaded, tmp_path)
    assert pruned.figures["channels"]["conv3"] == [64, 32] and pruned.module.dense4.in_features == 288
    x = torch.randn(8, 3, 24, 24)
    with torch.no_grad():
        for a, b in zip(model(x), pruned.module(x)):
            assert torch.allclose(a, b, atol=1e-6)


def test_failure_inside_torch_pruning_names_the_layer(tmp_path):
    loaded = _loaded(_settled(SubPixel(), (1, 3, 8, 8)), (1, 3, 8, 8), tmp_path)
    with raises_user_error(PruneError, r"torch-pruning failed on layer 'up' \(Conv2d\).*\n.*--protect 'up'"):
        _run(PruneStage(ratio=0.5), loaded, tmp_path)
    pruned, _, _ = _run(PruneStage(ratio=0.5, protect=("up",)), loaded, tmp_path)
    assert pruned.module.up.out_channels == 16 and pruned.module.refine.out_channels == 4
