"""LeNet-300-100 and LeNet-5 (Caffe variant) as used by Han et al. (2015) and the pruning literature.

LeNet-300-100: 784-300-100-10 fully connected with ReLU (266,610 parameters on MNIST).
LeNet-5 (Caffe ``lenet_train_test.prototxt``): conv 5x5x20, max-pool, conv 5x5x50, max-pool, fc 500, ReLU,
fc 10 (431,080 parameters on MNIST). As in Caffe, there is no nonlinearity after the convolutions.
"""
from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError


class LeNet300100(nn.Module):
    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(self.flatten(x)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = input_shape
        side = lambda s: ((s - 4) // 2 - 4) // 2  # two 5x5 valid convs, each followed by 2x2 pooling
        if side(h) < 1 or side(w) < 1:
            raise ConfigError(f"lenet5 needs inputs of at least 16x16 pixels, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side(h) * side(w), 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)
