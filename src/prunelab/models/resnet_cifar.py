"""ResNets for CIFAR (He et al., 2016, section 4.2): depth 6n+2 with 16/32/64 channels.

``shortcut="A"`` (the paper's and Li et al.'s): identity, with stride-2 subsampling and zero-padded channels
when the shape changes, no parameters. ``shortcut="B"``: a 1x1 convolution + BN projection when it changes.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pad = out_ch - in_ch

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_ch, out_ch)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 56, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10,
                 shortcut: str = "A", widths: list[int] | None = None) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        mids = widths if widths is not None else [16] * n + [32] * n + [64] * n
        if len(mids) != 3 * n:
            raise ConfigError(f"widths must list {3 * n} inner block widths for depth {depth}")
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, out_ch in enumerate([16, 32, 64]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, int(mids[stage * n + i]), out_ch, stride, shortcut))
                c = out_ch
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """The family's initialisation (also used to re-initialise a pruned architecture for training from scratch)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
