"""Calibration: what each target layer sees, streamed over a few batches of model inputs.

For every target weight W, viewed as a matrix (out, in * kernel) in the engine's (out, in, *kernel) layout, the
layer's inputs are rearranged into rows X of the same in * kernel columns (a linear layer: one row per token or
sample; a convolution: one row per output position, its receptive field unfolded as im2col), so that the layer
computes X W^T. Accumulated per target, in float64, without holding any activation:

- ``sq``: sum over rows of x_j^2, the squared column norms ||X_j||^2 (Wanda's activation statistic);
- ``gram``: X^T X, when asked (SparseGPT's layer Hessian up to a factor 2);
- ``rows``: how many rows were seen.

Forward hooks observe the modules that own the targets: Linear (and subclasses), Conv1d/Conv2d with groups=1,
Hugging Face Conv1D. A target whose inputs cannot be observed this way (attention's in_proj and out_proj, whose
parent reads the weights directly; recurrent weights; grouped convolutions) is a ConfigError naming it, so a
method never silently scores weights without their statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .inputs import call, map_tensors
from .targets import Layout, is_hf_conv1d


@dataclass
class InputStats:
    """Streamed statistics of one target layer's inputs, as rows of its (in * kernel) columns."""

    rows: int
    sq: Tensor                 # (columns,) float64: sum of x^2 per column
    gram: Tensor | None = None  # (columns, columns) float64: X^T X

    def norms(self) -> Tensor:
        """||X_j||_2 per column."""
        return self.sq.sqrt()


def _rows(module: nn.Module, x: Tensor) -> Tensor:
    """The module's input as rows of its weight's (in * kernel) columns."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (N, C k k, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]),
                        (0, module.padding[0]), (1, module.stride[0]))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])  # Linear, HF Conv1D: features last


def _observable(module: nn.Module, attr: str) -> bool:
    if attr != "weight" or isinstance(module, nn.modules.conv._ConvTransposeNd):
        return False
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 and isinstance(module.padding, tuple) and module.padding_mode == "zeros"
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def owners(model: nn.Module, targets: Mapping[str, Tensor]) -> dict[str, nn.Module]:
    """The module whose forward call shows each target's inputs; ConfigError naming the targets without one."""
    by_param = {id(p): (m, attr) for m in model.modules() for attr, p in m.named_parameters(recurse=False)}
    # a Linear whose parent reads its weight (attention's out_proj) is never called: its hook would not fire
    read_directly = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    out, missing = {}, []
    for name, p in targets.items():
        module, attr = by_param.get(id(p), (None, None))
        if module is None or not _observable(module, attr) or id(module) in read_directly:
            missing.append(name)
        else:
            out[name] = module
    if missing:
        raise ConfigError(f"calibration cannot observe the inputs of {', '.join(missing[:3])}"
                          f"{' and more' if len(missing) > 3 else ''} (attention, recurrent or grouped layers); "
                          "leave them out with targets.exclude")
    return out


@torch.no_grad()
def input_stats(model: nn.Module, targets: Mapping[str, Tensor], batches: Iterable, samples: int,
                gram: bool = False) -> dict[str, InputStats]:
    """Run ``model`` (eval mode) over ``batches`` (model inputs, or ``(inputs, targets)`` pairs whose first item
    is used) until ``samples`` inputs were seen, accumulating every target's :class:`InputStats`."""
    mods = owners(model, targets)
    stats: dict[str, InputStats] = {}

    def hook(name):
        def fn(module, args, output):
            x = _rows(module, args[0].detach()).double()
            s = stats.get(name)
            if s is None:
                s = stats[name] = InputStats(0, torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                             torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64,
                                                         device=x.device) if gram else None)
            s.rows += x.shape[0]
            s.sq += x.square().sum(0)
            if gram:
                s.gram += x.T @ x
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    was = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 and not isinstance(batch[1], dict) \
                else batch
            n = _batch_size(x)
            x = map_tensors(x, lambda t: t[: samples - seen] if t.dim() > 0 and t.shape[0] == n else t)
            device = next(model.parameters()).device
            try:
                call(model, map_tensors(x, lambda t: t.to(device)))
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # the user's inputs, the user's model
                raise ConfigError(f"the model rejected the calibration inputs: {str(exc).splitlines()[0][:200]}"
                                  ) from None
            seen += min(n, samples - seen)
            if seen >= samples:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if seen == 0:
        raise ConfigError("the calibration data is empty: give at least one batch of model inputs")
    unseen = [n for n in mods if n not in stats]
    if unseen:
        raise ConfigError(f"calibration never reached {', '.join(unseen[:3])}: the model did not call them")
    return stats


def _batch_size(x) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    leaves = [t for t in (x.values() if isinstance(x, Mapping) else x) if isinstance(t, Tensor) and t.dim() > 0]
    return leaves[0].shape[0] if leaves else 1


def column_view(layout: Layout, t: Tensor) -> Tensor:
    """A weight (or its scores, its mask) as the (out, in * kernel) matrix whose columns match the stats'."""
    c = layout.canonical(t)
    return c.reshape(c.shape[0], -1)
