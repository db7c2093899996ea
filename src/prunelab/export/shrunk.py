"""The shrunk-model file: a physically smaller model's weights and its *width manifest* in one safetensors file.

The manifest holds the original model's name and arguments and, for every module whose size changed
(:func:`prunelab.structure.surgery.shrink`), its new sizes. :func:`load_shrunk` builds the original architecture,
swaps those modules for resized ones of the same class and loads the weights: nothing is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from ..io import atomic_write_safetensors, read_tagged_safetensors
from ..structure.heads import HeadPrunedAttention
from ..targets import is_hf_conv1d

FORMAT = "prunelab-shrunk/1"


def _resized(m: nn.Module, spec: dict) -> nn.Module:
    if spec.get("type") == "HeadPrunedAttention" and isinstance(m, nn.MultiheadAttention):
        return HeadPrunedAttention.from_attention(m, torch.tensor([int(h) for h in spec["heads_kept"]]))
    if spec.get("type") != type(m).__name__:
        raise CheckpointError(f"width manifest says {spec.get('type')} where the model has {type(m).__name__}")
    if isinstance(m, nn.modules.conv._ConvNd):
        return type(m)(int(spec["in_channels"]), int(spec["out_channels"]), m.kernel_size, m.stride, m.padding,
                       m.dilation, int(spec["groups"]), m.bias is not None, m.padding_mode)
    if isinstance(m, nn.Linear):
        return nn.Linear(int(spec["in_features"]), int(spec["out_features"]), m.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(int(spec["num_features"]), m.eps, m.momentum, m.affine, m.track_running_stats)
    if is_hf_conv1d(m):
        return type(m)(int(spec["out_features"]), int(spec["in_features"]))  # Conv1D(nf, nx)
    if type(m) in (nn.LSTM, nn.GRU, nn.RNN):
        extra = {"nonlinearity": m.nonlinearity} if isinstance(m, nn.RNN) else {}
        return type(m)(int(spec["input_size"]), int(spec["hidden_size"]), num_layers=m.num_layers, bias=m.bias,
                       batch_first=m.batch_first, dropout=m.dropout, bidirectional=m.bidirectional, **extra)
    raise CheckpointError(f"width manifest resizes {type(m).__name__}, which cannot be rebuilt")


def apply_widths(model: nn.Module, widths: dict[str, dict]) -> nn.Module:
    """Swap the modules named in ``widths`` for resized ones of the same class (fresh parameters)."""
    modules = dict(model.named_modules())
    for name, spec in widths.items():
        if name not in modules or not name:
            raise CheckpointError(f"width manifest names module {name!r}, which the model does not have")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, _resized(modules[name], spec))
    return model


def save_shrunk(path: str | Path, model: nn.Module, widths: dict, model_spec: dict) -> int:
    """Write the shrunk weights and the width manifest into one safetensors file; returns its bytes.

    ``model_spec``: ``{"name", "kwargs", "input_shape", "num_classes"}``, what ``build_model`` needs.
    """
    manifest = {"model": model_spec, "widths": widths}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_safetensors(path, state, {"format": FORMAT, "manifest": json.dumps(manifest)})
    return Path(path).stat().st_size


def load_shrunk(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a shrunk model from its file (weights + width manifest); returns (model, manifest)."""
    from ..models import build_model

    tensors, manifest = read_tagged_safetensors(path, FORMAT, "shrunk model", "manifest")
    try:
        spec = manifest["model"]
        args = (str(spec["name"]), tuple(int(d) for d in spec["input_shape"]), int(spec["num_classes"]))
        kwargs, widths = dict(spec.get("kwargs", {})), dict(manifest["widths"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{path} has a width manifest without a readable model (name, input_shape, "
                              f"num_classes, widths)") from None
    # The manifest is data from a file: the architecture it names is built on the meta device first (no
    # memory) and must hold exactly the file's tensors, so a manifest naming a huge model is refused before
    # a byte of it is allocated.
    with torch.device("meta"):
        meta = apply_widths(build_model(*args, **kwargs), widths)
    _check_shapes(path, {k: tuple(v.shape) for k, v in meta.state_dict().items()},
                  {k: tuple(v.shape) for k, v in tensors.items()})
    del meta
    model = apply_widths(build_model(*args, **kwargs), widths)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its width manifest: {first_line(exc, 300)}") from None
    return model.to(device), manifest


def _check_shapes(path, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    """Refuse a file whose tensors are not exactly the ones its manifest's model holds (one sentence)."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    if missing or extra or wrong:
        what = (f"lacks {missing[0]}" if missing else f"holds {extra[0]}, which its model does not have" if extra
                else f"holds {wrong[0]} of shape {list(found[wrong[0]])} where its model has {list(expected[wrong[0]])}")
        raise CheckpointError(f"{path} does not match its width manifest: it {what}")


def model_spec(name: str, kwargs: dict[str, Any], input_shape, num_classes: int) -> dict:
    return {"name": name, "kwargs": dict(kwargs), "input_shape": list(input_shape), "num_classes": int(num_classes)}
