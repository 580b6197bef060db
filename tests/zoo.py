"""The zoo: small models, built in code, with the structures real trained checkpoints have.

Each entry reproduces a structure that edgec met in a third-party checkpoint (see the real-world intake issue):
a paddle2onnx file, a recurrent model whose state input has no batch axis, a YOLO-style detector with dynamic
H/W and a ``concat(boxes, scores)`` head, a PReLU + Softmax face-cascade CNN that permutes NCHW->NHWC before
flatten, a BERT-style encoder (int64 ids + attention mask, an additive -1e9 mask, mean pooling, L2 norm), and
a model that exists only as TorchScript.

To add a model: write a ``make_<name>(folder) -> ZooCase`` and add it to ``ZOO`` with the targets it must
build for. ``tests/test_zoo.py`` builds every entry for every target it names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass
class ZooCase:
    """A zoo model on disk: the checkpoint, what `edgec build` needs besides it, and data."""

    checkpoint: Path
    calib: str  # a path or module:function, as --calib takes it
    args: tuple[str, ...] = ()  # more `edgec build` arguments (--input ...)
    eval_data: Path | None = None  # an .npz for --data
    labels: Path | None = None


# --------------------------------------------------------------------------------------------------------
# paddle2onnx-style ONNX: weights in Constant nodes, unfolded BatchNormalization, opset 11, dims named '?'.


def paddle_style_onnx(path: Path, classes: int = 2, seed: int = 0) -> Path:
    """A PP-LCNet-style classifier as paddle2onnx writes it (a text-direction classifier's structure)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []

    def const(name: str, arr: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_v")))
        return name

    def conv_bn_act(x: str, cin: int, cout: int, k: int, stride: int, group: int, tag: str) -> str:
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{tag}_weights", w)], [f"{tag}.tmp_0"], kernel_shape=[k, k],
            strides=[stride, stride], pads=[k // 2] * 4, group=group,
        ))
        scale = (1.0 + 0.1 * rng.standard_normal(cout)).astype(np.float32)
        bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        mean = (0.2 * rng.standard_normal(cout)).astype(np.float32)
        var = (1.0 + 0.5 * rng.random(cout)).astype(np.float32)
        nodes.append(helper.make_node(
            "BatchNormalization",
            [f"{tag}.tmp_0", const(f"{tag}_bn_scale", scale), const(f"{tag}_bn_offset", bias),
             const(f"{tag}_bn_mean", mean), const(f"{tag}_bn_variance", var)],
            [f"batch_norm_{tag}.tmp_2"], epsilon=1e-5,
        ))
        # paddle2onnx at opset 11 writes hard_swish as x * HardSigmoid(x).
        nodes.append(helper.make_node("HardSigmoid", [f"batch_norm_{tag}.tmp_2"], [f"{tag}_hs"], alpha=1 / 6, beta=0.5))
        nodes.append(helper.make_node("Mul", [f"batch_norm_{tag}.tmp_2", f"{tag}_hs"], [f"hardswish_{tag}.tmp_0"]))
        return f"hardswish_{tag}.tmp_0"

    x = conv_bn_act("x", 3, 8, 3, 2, 1, "c1")
    x = conv_bn_act(x, 8, 8, 3, 1, 8, "dw2")
    x = conv_bn_act(x, 8, 16, 1, 1, 1, "pw2")
    x = conv_bn_act(x, 16, 16, 3, 2, 16, "dw3")
    x = conv_bn_act(x, 16, 32, 1, 1, 1, "pw3")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool.tmp_0"]))
    nodes.append(helper.make_node("Reshape", ["pool.tmp_0", const("shape", np.array([-1, 32], np.int64))], ["flat"]))
    fw = (rng.standard_normal((32, classes)) * 0.3).astype(np.float32)
    nodes.append(helper.make_node("MatMul", ["flat", const("fc_weights", fw)], ["fc.tmp_0"]))
    nodes.append(helper.make_node("Add", ["fc.tmp_0", const("fc_offset", np.zeros(classes, np.float32))], ["fc.tmp_1"]))
    nodes.append(helper.make_node("Softmax", ["fc.tmp_1"], ["softmax_0.tmp_0"], axis=1))
    graph = helper.make_graph(
        nodes, "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "p2o.DynamicDimension.1", "?"])],
        [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, ["?", classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="PaddlePaddle")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def make_paddle_cls(folder: Path) -> ZooCase:
    path = paddle_style_onnx(folder / "paddle_cls.onnx")
    rng = np.random.default_rng(1)
    np.savez(folder / "calib.npz", x=rng.random((24, 3, 48, 64), dtype=np.float32))
    np.savez(folder / "eval.npz", x=rng.random((16, 3, 48, 64), dtype=np.float32))
    return ZooCase(path, str(folder / "calib.npz"), ("--input", "x:1x3x48x64"), folder / "eval.npz")


# --------------------------------------------------------------------------------------------------------
# A voice-activity detector with a recurrent state and no batch axis (Silero VAD's signature).

VAD_CHUNK = 576  # 64 samples of context + 512 new ones at 16 kHz


class VadLSTM(nn.Module):
    """x [1, 576] and state [2, 1, 128] (h and c of one LSTM cell) -> speech probability [1, 1], new state."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, 16, 32, stride=16), nn.ReLU(), nn.Conv1d(16, 32, 5, stride=2), nn.ReLU(),
        )
        self.cell = nn.LSTMCell(32, 128)
        self.decoder = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x.unsqueeze(1)).mean(dim=2)
        h, c = self.cell(feats, (state[0], state[1]))
        prob = torch.sigmoid(self.decoder(torch.relu(h)))
        return prob, torch.stack([h, c])

    example_inputs = (torch.zeros(1, VAD_CHUNK), torch.zeros(2, 1, 128))


def vad_signal(seconds: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 16 kHz signal alternating 'speech' (voiced harmonics with a syllable envelope) and quiet noise, and
    the speech/non-speech label of every 512-sample chunk."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000.0
    speech = np.zeros(n, bool)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.3, 0.8) * 16000)
        if rng.random() < 0.5:
            speech[pos:pos + length] = True
        pos += length
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000.0) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = 0.01 * rng.standard_normal(n) + np.where(speech, 0.3 * voiced * envelope, 0.0)
    chunks = (n - 64) // 512
    labels = np.array([speech[64 + 512 * i: 64 + 512 * (i + 1)].mean() > 0.5 for i in range(chunks)])
    return signal.astype(np.float32), labels


def vad_chunks(signal: np.ndarray) -> np.ndarray:
    """[chunks, 576]: each 512-sample chunk with the 64 samples before it, as Silero VAD is fed."""
    chunks = (len(signal) - 64) // 512
    return np.stack([signal[512 * i: 512 * i + VAD_CHUNK] for i in range(chunks)])


def run_vad(model: Callable, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over the chunks in order, carrying the state: (probabilities, the state fed each chunk)."""
    state = torch.zeros(2, 1, 128)
    probs, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(state.numpy().copy())
            prob, state = model(torch.from_numpy(chunk[None]), state)
            probs.append(float(prob.reshape(-1)[0]))
    return np.array(probs), np.stack(states)


def trained_vad(seed: int = 0, steps: int = 40, batch: int = 16, window: int = 12) -> VadLSTM:
    """A VadLSTM trained briefly on synthetic speech, so its decisions mean something (about a second): batches
    of ``window`` consecutive chunks, the state carried through each window."""
    torch.manual_seed(seed)
    model = VadLSTM()
    signal, labels = vad_signal(8.0, seed)
    chunks = torch.from_numpy(vad_chunks(signal))
    target = torch.from_numpy(labels.astype(np.float32))
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(steps):
        starts = rng.integers(0, len(chunks) - window, batch)
        state = torch.zeros(2, batch, 128)
        loss = torch.zeros(())
        for k in range(window):
            idx = torch.from_numpy(starts + k)
            prob, state = model(chunks[idx], state)
            loss = loss + nn.functional.binary_cross_entropy(prob.reshape(-1), target[idx])
        opt.zero_grad()
        (loss / window).backward()
        opt.step()
    return model.eval()


CALIB_READER = '''"""Calibration samples for a stateful model: (x, state) pairs from running the FP32 model over audio."""
import sys

import numpy as np
import torch

sys.path.insert(0, {zoo_dir!r})
import zoo  # noqa: E402

CHECKPOINT = {checkpoint!r}


def samples():
    model = torch.export.load(CHECKPOINT).module()
    signal, _ = zoo.vad_signal(4.0, seed=3)
    chunks = zoo.vad_chunks(signal)
    _, states = zoo.run_vad(model, chunks)
    for chunk, state in zip(chunks, states):
        yield {{"x": chunk[None].astype(np.float32), "state": state.astype(np.float32)}}
'''


def make_vad(folder: Path) -> ZooCase:
    model = trained_vad()
    path = folder / "vad.pt2"
    torch.export.save(torch.export.export(model, VadLSTM.example_inputs), str(path))
    reader = folder / "vad_calib.py"
    reader.write_text(CALIB_READER.format(checkpoint=str(path), zoo_dir=str(Path(__file__).parent)))
    signal, labels = vad_signal(4.0, seed=7)
    chunks = vad_chunks(signal)
    _, states = run_vad(model, chunks)
    # Evaluation samples stacked on a new leading axis: x [N, 1, 576], state [N, 2, 1, 128].
    np.savez(folder / "eval.npz", x=chunks[:, None].astype(np.float32), state=states.astype(np.float32))
    np.save(folder / "labels.npy", labels.astype(np.int64))
    return ZooCase(path, f"{reader}:samples", (), folder / "eval.npz", folder / "labels.npy")


# --------------------------------------------------------------------------------------------------------
# A YOLO-style detector: dynamic batch/height/width and one output concat(boxes, sigmoid scores).


class YoloStyle(nn.Module):
    """Boxes (cx, cy, w, h in pixels) and class scores of every anchor point, concatenated: [N, 4 + C, A]."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 16, 3, 2, 1),
            nn.SiLU(),
        )
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, classes, 1)
        self.stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        n, _, h, w = f.shape
        ys = torch.arange(h, dtype=x.dtype).view(1, h, 1).expand(1, h, w)
        xs = torch.arange(w, dtype=x.dtype).view(1, 1, w).expand(1, h, w)
        grid = torch.cat([xs, ys]).reshape(1, 2, h * w)
        raw = self.box(f).reshape(n, 4, h * w)
        centers = (grid + 0.5 + torch.tanh(raw[:, :2])) * self.stride
        sizes = torch.exp(raw[:, 2:].clamp(-4, 4)) * self.stride * 2
        scores = torch.sigmoid(self.cls(f).reshape(n, -1, h * w))
        return torch.cat([centers, sizes, scores], dim=1)


def yolo_style_onnx(path: Path, seed: int = 0) -> Path:
    """The detector exported with dynamic batch, height and width, as detector exports usually are."""
    torch.manual_seed(seed)
    model = YoloStyle().eval()
    with torch.no_grad():
        model.cls.bias.fill_(-2.0)
    torch.onnx.export(
        model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"], output_names=["output0"],
        dynamo=False, opset_version=17,
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}},
    )
    return path


def detector_images(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Dark images with a few bright rectangles: something for a detector's scores to respond to."""
    rng = np.random.default_rng(seed)
    images = 0.1 * rng.random((count, 3, size, size), dtype=np.float32)
    for img in images:
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, size - 16, 2)
            w, h = rng.integers(8, 16, 2)
            img[:, y0:y0 + h, x0:x0 + w] += rng.random(3)[:, None, None].astype(np.float32)
    return images


def make_yolo(folder: Path) -> ZooCase:
    path = yolo_style_onnx(folder / "yolo_style.onnx")
    np.savez(folder / "calib.npz", images=detector_images(16, seed=1))
    np.savez(folder / "eval.npz", images=detector_images(8, seed=2))
    return ZooCase(path, str(folder / "calib.npz"), (), folder / "eval.npz")


# --------------------------------------------------------------------------------------------------------
# A face-detection cascade stage (MTCNN's RNet): per-channel PReLU, MaxPool, permute before flatten, a 2-way
# Softmax head beside a box regression head.


class CascadeRNet(nn.Module):
    """24x24 RGB -> (box regression [N, 4], class probabilities [N, classes])."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, classes)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))

    example_inputs = (torch.zeros(1, 3, 24, 24),)


class CascadePNet(nn.Module):
    """MTCNN's PNet: fully convolutional; a 2-channel Softmax map and a 4-channel box map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))

    example_inputs = (torch.zeros(1, 3, 32, 32),)


def digits_rgb24() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 24x24 RGB images in [0, 1] (nearest upsampling x3), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images / 16.0).astype(np.float32)
    big = gray.repeat(3, axis=1).repeat(3, axis=2)
    rgb = np.stack([big, 0.8 * big, 1.0 - 0.5 * big], axis=1).astype(np.float32)
    return rgb, digits.target.astype(np.int64)


def trained_cascade_rnet(epochs: int = 4, seed: int = 0) -> tuple[CascadeRNet, dict[str, np.ndarray]]:
    """CascadeRNet trained as a 10-class classifier on digits (a few seconds); returns it and the data split."""
    torch.manual_seed(seed)
    images, labels = digits_rgb24()
    idx = np.random.default_rng(seed).permutation(len(images))
    train, held = idx[:1400], idx[1400:]
    model = CascadeRNet(classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(epochs):
        for start in range(0, len(train), 64):
            _, prob = model(x[start:start + 64])
            loss = nn.functional.nll_loss(torch.log(prob + 1e-8), y[start:start + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    data = {"train_x": images[train], "train_y": labels[train], "held_x": images[held], "held_y": labels[held]}
    return model.eval(), data


def cascade_rnet_factory() -> nn.Module:
    """``--model-factory zoo:cascade_rnet_factory``: the architecture a CascadeRNet state_dict fits."""
    return CascadeRNet(classes=10)


def make_cascade(folder: Path) -> ZooCase:
    model, data = trained_cascade_rnet()
    path = folder / "rnet.pt2"
    torch.export.save(torch.export.export(model, CascadeRNet.example_inputs), str(path))
    np.savez(folder / "calib.npz", x=data["train_x"][:64])
    np.savez(folder / "eval.npz", x=data["held_x"][:96])
    np.save(folder / "labels.npy", data["held_y"][:96])
    return ZooCase(path, str(folder / "calib.npz"), (), folder / "eval.npz", folder / "labels.npy")


def make_pnet(folder: Path) -> ZooCase:
    torch.manual_seed(0)
    model = CascadePNet().eval()
    path = folder / "pnet.pt2"
    torch.export.save(torch.export.export(model, CascadePNet.example_inputs), str(path))
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.random((16, 3, 32, 32), dtype=np.float32))
    return ZooCase(path, str(folder / "calib.npz"), ())


class CascadeONet(nn.Module):
    """MTCNN's ONet: 48x48 RGB, four conv blocks with PReLU, permute before flatten, three heads:
    (box regression [N, 4], landmarks [N, 10], face probabilities [N, 2])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    example_inputs = (torch.zeros(1, 3, 48, 48),)


# --------------------------------------------------------------------------------------------------------
# A BERT-style sentence encoder: int64 ids + attention mask, an additive -1e9 mask, mean pooling, L2 norm.


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, 4 * hidden)
        self.ff2 = nn.Linear(4 * hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class BertStyle(nn.Module):
    def __init__(self, vocab: int = 120, hidden: int = 64, layers: int = 2, heads: int = 4, length: int = 16):
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(length, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.norm(self.tokens(input_ids) + self.positions(pos))
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    example_inputs = (torch.ones(1, 16, dtype=torch.int64), torch.ones(1, 16, dtype=torch.int64))


def token_batches(count: int, length: int = 16, vocab: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and masks of ``count`` 'sentences' of 5 to ``length`` tokens, padded: [count, 1, length]."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((count, 1, length), np.int64)
    mask = np.zeros((count, 1, length), np.int64)
    for i in range(count):
        n = int(rng.integers(5, length + 1))
        ids[i, 0, :n] = rng.integers(1, vocab, n)
        mask[i, 0, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_encoder(folder: Path) -> ZooCase:
    torch.manual_seed(0)
    model = BertStyle().eval()
    path = folder / "encoder.pt2"
    torch.export.save(torch.export.export(model, BertStyle.example_inputs), str(path))
    calib = token_batches(32, seed=1)
    np.savez(folder / "calib.npz", **{k: v[:, 0] for k, v in calib.items()})
    held = token_batches(24, seed=2)
    np.savez(folder / "eval.npz", **{k: v[:, 0] for k, v in held.items()})
    return ZooCase(path, str(folder / "calib.npz"), (), folder / "eval.npz")


# --------------------------------------------------------------------------------------------------------
# A model that exists only as TorchScript.


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
        )
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def make_torchscript(folder: Path) -> ZooCase:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    path = folder / "small_cnn.torchscript.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 16, 16)).save(str(path))
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.random((16, 3, 16, 16), dtype=np.float32))
    np.savez(folder / "eval.npz", x=rng.random((8, 3, 16, 16), dtype=np.float32))
    return ZooCase(path, str(folder / "calib.npz"), ("--input", "x:1x3x16x16"), folder / "eval.npz")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    make: Callable[[Path], ZooCase]
    targets: tuple[str, ...]  # every target this model must build for, with the default flags


ZOO: dict[str, ZooEntry] = {
    "paddle_cls": ZooEntry(make_paddle_cls, ("cpu", "jetson")),
    "vad": ZooEntry(make_vad, ("cpu", "jetson", "rpi5")),
    "yolo": ZooEntry(make_yolo, ("cpu", "jetson")),
    "cascade": ZooEntry(make_cascade, ("cpu", "jetson", "rpi5", "mcu", "ethos-u55-256")),
    "pnet": ZooEntry(make_pnet, ("cpu", "jetson", "rpi5", "mcu")),
    "encoder": ZooEntry(make_encoder, ("cpu", "jetson", "rpi5")),
    "torchscript": ZooEntry(make_torchscript, ("cpu", "jetson", "rpi5", "mcu")),
}
