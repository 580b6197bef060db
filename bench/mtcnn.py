"""MTCNN's output network (ONet) as facenet-pytorch defines it, for its trained weights (``facenet_pytorch/data/
onet.pt`` in the pinned wheel, a state_dict loaded with ``weights_only=True``), and the face windows it is scored
on. The architecture is facenet-pytorch's (MIT; ``facenet_pytorch/models/mtcnn.py``), the module names as there so
its state_dict loads unchanged: conv/PReLU/max-pool stages, a dense layer, and three heads (box offsets, landmarks,
face probability through a Softmax), the PReLU + Softmax CNN that microcontroller builds used to refuse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: facenet-pytorch's input scaling for ONet: (pixel - 127.5) / 128.
MEAN, SCALE = 127.5, 0.0078125
SIZE = 48


def make_onet(state_dict: dict[str, Any]) -> Any:
    from torch import nn

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = x.permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    net = ONet()
    net.load_state_dict(state_dict)
    return net.eval()


def windows() -> np.ndarray:
    """Square windows of scikit-image's bundled pictures resized to 48x48 and scaled as facenet-pytorch does,
    [N, 3, 48, 48]: a dense scan of ``astronaut`` (a face, so windows on, near and off it) and a coarser one of
    ``chelsea`` (a cat's face) and ``coffee``, the hard and the easy negatives."""
    from skimage import data, transform

    crops = []
    for image, step, sizes in ((data.astronaut(), 10, (80, 100, 120, 140)), (data.chelsea(), 20, (80, 120, 160)),
                               (data.coffee(), 20, (80, 120, 160))):
        image = image.astype(np.float32)
        h, w = image.shape[:2]
        for s in sizes:
            for y in range(0, h - s, step):
                for x in range(0, w - s, step):
                    crop = transform.resize(image[y:y + s, x:x + s], (SIZE, SIZE), preserve_range=True,
                                            anti_aliasing=True)
                    crops.append(crop)
    return ((np.stack(crops) - MEAN) * SCALE).transpose(0, 3, 1, 2).astype(np.float32)
