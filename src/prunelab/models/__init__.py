"""Model zoo: LeNets, CIFAR VGG and ResNet, any torchvision classification model (``torchvision:NAME``) and
Hugging Face causal language models (``hf:TYPE`` from a config, ``hf:/local/folder``; :mod:`.hf`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ConfigError, first_line
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
    return sorted(_BUILDERS) + ["torchvision:<name>", "hf:<model type or local folder>"]


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draws inside the block come from ``seed``, and the process's (CPU) RNG is left as it was; with
    ``seed=None`` they come from the process RNG as usual."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, /, seed: int | None = None,
                **kwargs: Any) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs.

    ``seed``: its initial weights are drawn from this seed and the global RNG is not touched; ``None`` draws
    them from the global RNG, as constructing a torch module does.
    """
    with seeded(seed):
        return _build(name, input_shape, num_classes, **kwargs)


def _build(name: str, input_shape: tuple[int, ...], num_classes: int, /, **kwargs: Any) -> nn.Module:
    derived = sorted({"num_classes", "input_shape", "vocab_size"} & set(kwargs))
    if derived:  # these come from the data set: a second value would be a TypeError or a silent mismatch
        raise ConfigError(f"model.kwargs {', '.join(derived)}: this comes from the data set ({num_classes} classes "
                          f"or tokens, inputs {tuple(input_shape)}); remove it from model.kwargs")
    if name.startswith("hf:"):
        from .hf import build_hf

        return build_hf(name[3:], num_classes, **kwargs)
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        if tv_name not in torchvision.models.list_models():
            raise ConfigError(f"torchvision has no model {tv_name!r}")
        # weights=None: pretrained weights would need a download; load your own with the checkpoint tools
        try:
            return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad parameters for model {name!r}: {first_line(exc, 200)}") from None
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    try:
        return _BUILDERS[name](tuple(input_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for model {name!r}: {exc}") from None


def reinit(model: nn.Module, seed: int | None) -> nn.Module:
    """Fresh random weights for ``model`` as it is now (e.g. a shrunk architecture), in place.

    Every submodule's ``reset_parameters`` (PyTorch's default initialisation, running statistics reset),
    then the family's own ``init_weights()`` when the model defines one, drawn from ``seed`` (the global RNG
    is left as it was; ``None``: drawn from the global RNG). A Hugging Face model is initialised as transformers
    initialises it: its ``_init_weights`` applied to every module (``init_weights()`` there skips modules it
    considers initialised, and ``reset_parameters`` alone drew embeddings with std 1 where the config says 0.02
    and left RMSNorm gains at their trained values), then its tied weights tied again.
    """
    with seeded(seed):
        hf_init = getattr(model, "_init_weights", None)
        if callable(hf_init) and hasattr(model, "config"):
            model.apply(hf_init)
            if hasattr(model, "tie_weights"):
                model.tie_weights()
            return model
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        init = getattr(model, "init_weights", None)  # a model family's own initialisation, when it has one
        if callable(init):
            init()
    return model


__all__ = ["build_model", "reinit", "seeded", "model_names", "LeNet5", "LeNet300100", "VGG", "ResNetCifar"]
