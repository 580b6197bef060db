"""The models of the benchmark suite, in plain torch: the trained digits CNN and two ImageNet-shaped nets.

The ImageNet-shaped nets (ResNet-18 and MobileNetV2 layouts at 1x3x224x224) have random weights and are
measured for latency only. Their BatchNorm statistics are set by a few train-mode passes over random images,
so activations keep a realistic scale through the depth of the net (the default running stats of 0/1 would
let them grow or vanish layer by layer, which no trained model does and which skews INT8 ranges).
Their calibration data is random-normal images, N(0, 1) per pixel (that is, already normalised).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

IMAGENET_SHAPE = (1, 3, 224, 224)
RANDOM_CALIB_SAMPLES = 32
NAMES = ("digits", "resnet18", "mobilenetv2")


@dataclasses.dataclass
class BenchModel:
    """One model of the suite: the module (eval mode), its input shape and its data."""

    name: str
    title: str
    module: Any
    input_shape: tuple[int, ...]
    calib: np.ndarray  # [N, *input_shape[1:]] float32
    calib_note: str
    eval_x: np.ndarray | None = None  # evaluation images, when the model is measured for accuracy too
    eval_y: np.ndarray | None = None
    note: str = ""

    @property
    def has_accuracy(self) -> bool:
        return self.eval_x is not None and self.eval_y is not None

    def calib_feeds(self) -> list[np.ndarray]:
        """The calibration samples one by one, each with the batch dimension of 1."""
        return [self.calib[i : i + 1] for i in range(len(self.calib))]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: Any = None) -> Any:
    from torch import nn

    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def resnet18_shape(num_classes: int = 1000) -> Any:
    """ResNet-18's layout: 7x7 stem, max pool, four stages of two basic blocks, global pool, linear head."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = _conv_bn(cin, cout, 3, stride, act=nn.ReLU)
            self.conv2 = _conv_bn(cout, cout, 3)
            self.down = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv2(self.conv1(x)) + self.down(x))

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(_conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    return ResNet18()


def mobilenetv2_shape(num_classes: int = 1000) -> Any:
    """MobileNetV2's layout (width 1.0): inverted residuals, ReLU6, linear bottlenecks, a 1280-wide head."""
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
            layers += [
                _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                _conv_bn(hidden, cout, 1),
            ]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        # (expansion, channels, repeats, first stride), as in the paper's Table 2
        SETTINGS = (
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        )

        def __init__(self) -> None:
            super().__init__()
            layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(_conv_bn(cin, 1280, 1, act=nn.ReLU6))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(1280, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    return MobileNetV2()


def _settle_batchnorm(
    module: Any, shape: tuple[int, ...], seed: int, passes: int = 3, batch: int = 8
) -> None:
    """Running statistics from a few train-mode passes over random images (no weights change)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average over the passes
            m.reset_running_stats()
    module.train()
    with torch.no_grad():
        for _ in range(passes):
            module(torch.randn((batch, *shape[1:]), generator=gen))
    module.eval()


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``n`` random-normal N(0, 1) images of ``shape`` (batch dimension replaced by ``n``), float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape[1:]), dtype=np.float32)


def imagenet_model(name: str, seed: int = 0, calib_samples: int = RANDOM_CALIB_SAMPLES) -> BenchModel:
    import torch

    factories = {
        "resnet18": (resnet18_shape, "ResNet-18 shape"),
        "mobilenetv2": (mobilenetv2_shape, "MobileNetV2 shape"),
    }
    factory, title = factories[name]
    torch.manual_seed(seed)
    module = factory()
    _settle_batchnorm(module, IMAGENET_SHAPE, seed)
    return BenchModel(
        name=name,
        title=f"{title}, {'x'.join(map(str, IMAGENET_SHAPE))}",
        module=module,
        input_shape=IMAGENET_SHAPE,
        calib=random_images(calib_samples, IMAGENET_SHAPE, seed + 1),
        calib_note=f"{calib_samples} random-normal N(0,1) images (seed {seed + 1})",
        note="random weights (BatchNorm statistics from random images): latency only",
    )


def digits_model(seed: int = 0, epochs: int = 15) -> BenchModel:
    """The demo CNN trained on scikit-learn's digits, with the bundled calibration and evaluation sets."""
    from edgec.demo import train_digits_cnn

    module, data = train_digits_cnn(epochs=epochs, seed=seed)
    return BenchModel(
        name="digits",
        title="digits CNN, 1x1x8x8",
        module=module,
        input_shape=(1, 1, 8, 8),
        calib=data["x_calib"],
        calib_note=f"{len(data['x_calib'])} digits training images (calibration split)",
        eval_x=data["x_eval"],
        eval_y=data["y_eval"],
        note=f"trained {epochs} epochs; accuracy on the {len(data['x_eval'])} held-out images",
    )


def load_model(name: str, seed: int = 0) -> BenchModel:
    if name == "digits":
        return digits_model(seed)
    if name in ("resnet18", "mobilenetv2"):
        return imagenet_model(name, seed)
    raise ValueError(f"unknown benchmark model '{name}' (known: {', '.join(NAMES)})")
