"""Small models that exercise the mcu target's refusals, built in code (never checked in as binaries)."""

from __future__ import annotations

import torch
from torch import nn


class WidePool(nn.Module):
    """A max pool with a 300-row kernel: TFLM runs it, vela leaves it on the CPU (kernel height > 256)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), (300, 1)).flatten(1))

    example_inputs = (torch.zeros(1, 1, 300, 1),)


class BigLinear(nn.Module):
    """1 M int8 weights: more than the 1 MiB of flash of the cortex-m4 profile."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1040)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    example_inputs = (torch.zeros(1, 1024),)


class WideActivations(nn.Module):
    """A 16-channel 128x128 feature map (256 KiB of int8): its arena exceeds the cortex-m4 profile's RAM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).amax(dim=(2, 3))

    example_inputs = (torch.zeros(1, 1, 128, 128),)


class FloatCumsum(nn.Module):
    """cumsum, which the PT2E quantizer leaves in float: not a full-integer model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), 1)

    example_inputs = (torch.zeros(1, 8),)


class Activations(nn.Module):
    """One of each activation TFLM runs in int8, between convs: per-channel PReLU; Sigmoid, Tanh, HardSwish and
    LeakyReLU branches concatenated (the Tanh's negative half must survive the concat); a Sigmoid gate (a Mul of
    two tensors); zero Pad; nearest upsampling; mean pooling (an adaptive average pool: ``x.mean((2, 3))`` gets a
    TRANSPOSE from litert-torch, even in FP32, and vela leaves that MEAN on the CPU); a Softmax head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.branches = nn.ModuleList(nn.Conv2d(8, 4, 1) for _ in range(5))
        self.down = nn.Conv2d(16, 16, 3, stride=2)
        self.up = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.stem(x))
        a, b, c, d, g = (conv(x) for conv in self.branches)
        y = torch.cat([torch.sigmoid(a), torch.tanh(b), nn.functional.hardswish(c),
                       nn.functional.leaky_relu(d, 0.1) * torch.sigmoid(g)], 1)
        y = self.down(nn.functional.pad(y, (1, 1, 1, 1)))
        y = self.up(nn.functional.interpolate(y, scale_factor=2.0, mode="nearest"))
        return torch.softmax(self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)), 1)

    example_inputs = (torch.zeros(1, 3, 16, 16),)


def build(cls: type) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()
