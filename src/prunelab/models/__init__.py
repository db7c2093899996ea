"""Model zoo: LeNets, CIFAR VGG and ResNet, and any torchvision classification model (``torchvision:NAME``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .lenet import LeNet5, LeNet300100
from .resnet_cifar import ResNetCifar
from .vgg import CONFIGS as VGG_CONFIGS, VGG

_BUILDERS = {
    "lenet300_100": lambda shape, k, **kw: LeNet300100(shape, k, **kw),
    "lenet5": lambda shape, k, **kw: LeNet5(shape, k, **kw),
    **{name: (lambda name: lambda shape, k, **kw: VGG(name, shape, k, **kw))(name) for name in VGG_CONFIGS},
    **{f"resnet{d}": (lambda d: lambda shape, k, **kw: ResNetCifar(d, shape, k, **kw))(d) for d in (20, 32, 44, 56, 110)},
}


def model_names() -> list[str]:
    return sorted(_BUILDERS) + ["torchvision:<name>"]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        if tv_name not in torchvision.models.list_models():
            raise ConfigError(f"torchvision has no model {tv_name!r}")
        # weights=None: pretrained weights would need a download; load your own with the checkpoint tools
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    try:
        return _BUILDERS[name](tuple(input_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for model {name!r}: {exc}") from None


def reinit(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights for ``model`` as it is now (e.g. a shrunk architecture), in place.

    Every submodule's ``reset_parameters`` (PyTorch's default initialisation, running statistics reset),
    then the family's own ``init_weights()`` when the model defines one, under ``torch.manual_seed(seed)``.
    """
    import torch

    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


__all__ = ["build_model", "reinit", "model_names", "LeNet5", "LeNet300100", "VGG", "ResNetCifar"]
