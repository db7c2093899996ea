"""Parameter and FLOP counts, dense and counting only nonzero weights.

FLOPs here are multiply-accumulates of convolution and linear layers (the convention of the pruning
literature, e.g. Rethinking the Value of Network Pruning), measured by forward hooks on one input: dense
counts every weight, nonzero counts only weights that are not zero (what a sparse kernel would execute).
"""
from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> dict[str, int]:
    """Total and nonzero parameters of the whole model."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"total": total, "nonzero": nonzero}


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu") -> dict[str, int]:
    """Dense and nonzero multiply-accumulates of conv and linear layers for one input of ``input_shape``."""
    totals = {"dense": 0, "nonzero": 0}

    def hook(module, inputs, output):
        w = module.weight
        if isinstance(module, nn.modules.conv._ConvNd):
            positions = output[0].numel() // output.shape[1]  # output positions per channel, one sample
            per_pos_dense = w.numel()  # every weight is used once at each output position
            totals["dense"] += positions * per_pos_dense
            totals["nonzero"] += positions * int((w != 0).sum())
        else:
            rows = output[0].numel() // output.shape[-1]
            totals["dense"] += rows * w.numel()
            totals["nonzero"] += rows * int((w != 0).sum())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return totals
