"""VGG for CIFAR with BatchNorm (the variant of Network Slimming and Rethinking the Value of Network Pruning).

3x3 convolutions with BN and ReLU, max-pooling between stages, global average pooling and one linear
classifier. ``widths`` overrides the per-layer channel counts (e.g. a pruned architecture), keeping ``"M"``
for the pooling positions.
"""
from __future__ import annotations

from torch import nn

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth: str = "vgg16", input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10,
                 widths: list | None = None) -> None:
        super().__init__()
        cfg = widths if widths is not None else CONFIGS[depth]
        layers: list[nn.Module] = []
        c = input_shape[0]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """The family's initialisation (also used to re-initialise a pruned architecture for training from scratch)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)  # as in Network Slimming's training code
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
