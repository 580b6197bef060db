"""The embedded default model: a small CNN trained in seconds on scikit-learn's digits (offline data).

``python -m edgec.demo FOLDER`` trains it and writes what ``make demo`` builds and benchmarks:
``digits_cnn.pt2`` (an ExportedProgram), ``calib.npz``, ``eval.npz`` and ``eval_labels.npy``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def digits_cnn() -> Any:
    """The architecture: three convolutions with BatchNorm, a residual block, global pooling, a linear head."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.block = Residual(16)
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.down(self.block(self.stem(x)))
            return self.head(torch.flatten(self.pool(x), 1))

    return DigitsCNN()


def train_digits_cnn(epochs: int = 15, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train the demo CNN on the digits training split; returns the model (eval mode) and the data split."""
    import numpy as np
    import torch

    from edgec.calibration_data.samples import digits_split

    torch.manual_seed(seed)
    data = digits_split(seed=seed)
    model = digits_cnn()
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"].astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model, data


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean() * 100)


def write_demo(folder: Path, epochs: int = 15, seed: int = 0) -> dict[str, Path]:
    """Train the model and write the checkpoint and data sets into ``folder``."""
    import torch

    from edgec.calibration_data.samples import write_digits_sets

    folder.mkdir(parents=True, exist_ok=True)
    model, data = train_digits_cnn(epochs, seed)
    paths = write_digits_sets(folder)
    example = (torch.from_numpy(data["x_eval"][:1]),)
    ep = torch.export.export(model, example)
    ckpt = folder / "digits_cnn.pt2"
    torch.export.save(ep, str(ckpt))
    paths["checkpoint"] = ckpt
    paths["accuracy"] = accuracy(model, data["x_eval"], data["y_eval"])  # type: ignore[assignment]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgec.demo", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    paths = write_demo(args.folder, args.epochs)
    print(f"trained the digits CNN: {paths.pop('accuracy'):.1f}% top-1 on the held-out split", file=sys.stderr)
    for name, path in paths.items():
        print(f"  {name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
