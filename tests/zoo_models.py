"""Small models with the variety real checkpoints have, built in code (never checked in as binaries)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TokensAndFeatures(nn.Module):
    """Two inputs (int64 tokens, float features), LayerNorm, attention, GELU; two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.proj = nn.Linear(8, 32)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))

    def forward(self, tokens: torch.Tensor, features: torch.Tensor):
        x = self.norm(self.embed(tokens))
        y, _ = self.attn(x, x, x, need_weights=False)
        pooled = y.mean(dim=1) + self.proj(features)
        return self.head(pooled), pooled

    example_inputs = (torch.randint(0, 50, (1, 16)), torch.randn(1, 8))


class Activations(nn.Module):
    """PReLU, HardSigmoid, GELU, a depthwise convolution and BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.hs = nn.Hardsigmoid()
        self.pw = nn.Conv2d(8, 16, 1)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn(self.conv(x)))
        x = x * self.hs(self.dw(x))
        x = self.gelu(self.pw(x)).mean(dim=(2, 3))
        return self.fc(x)

    example_inputs = (torch.randn(1, 3, 16, 16),)


class Recurrent(nn.Module):
    """An LSTM over a sequence, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])

    example_inputs = (torch.randn(1, 10, 8),)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def tiny_cnn() -> nn.Module:
    """A model factory, as ``--model-factory zoo_models:tiny_cnn`` names it."""
    torch.manual_seed(0)
    return TinyCNN()


def onnx_with_constant_weights(path) -> None:
    """An ONNX Conv -> Relu -> GAP -> Gemm classifier whose weights sit in Constant nodes, not initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
    b = np.zeros(8, np.float32)
    fw = rng.standard_normal((10, 8)).astype(np.float32) * 0.3
    fb = np.zeros(10, np.float32)

    def const(name, arr):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_t"))

    nodes = [
        const("w", w), const("b", b), const("fw", fw), const("fb", fb),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "const_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def outlier_net(outlier: float) -> nn.Module:
    """conv -> relu -> scale channel 0 by ``outlier`` -> conv that undoes it -> relu -> linear.

    In float the scale cancels out. INT8 quantizes the scaled tensor per tensor, so its step is ``outlier``
    times too coarse for channels 1-7, and the error shows at the second conv: the layer to keep in FP32.
    """

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8 * 8 * 8, 10)
            scale = torch.ones(1, 8, 1, 1)
            scale[0, 0] = outlier
            self.register_buffer("scale", scale)
            with torch.no_grad():
                self.conv2.weight[:, 0] /= outlier

        def forward(self, x):
            x = torch.relu(self.conv1(x)) * self.scale
            x = torch.relu(self.conv2(x))
            return self.head(x.flatten(1))

    return Net().eval()


def wide_range_net(outlier: float) -> nn.Module:
    """conv -> relu -> scale channel 0 by ``outlier`` -> depthwise conv -> scale channel 0 back -> relu -> linear.

    The depthwise conv reads a tensor whose channel 0 spans ``outlier`` times the others' range: one int8
    scale for it leaves channels 1-7 a handful of levels, 16 bits leave them hundreds. Its weights are
    per channel, so int8 weights are fine: int16 activations (16x8) repair this layer, unlike ``outlier_net``'s.
    """

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.head = nn.Linear(8 * 8 * 8, 10)
            scale = torch.ones(1, 8, 1, 1)
            scale[0, 0] = outlier
            self.register_buffer("scale", scale)

        def forward(self, x):
            x = torch.relu(self.conv1(x)) * self.scale
            x = torch.relu(self.conv2(x) / self.scale)
            return self.head(x.flatten(1))

    return Net().eval()
