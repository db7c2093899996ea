"""Parameter and FLOP counts, dense and counting only nonzero weights.

FLOPs here are multiply-accumulates of weight layers: convolutions, linear layers, Hugging Face Conv1D and
attention projections (the convention of the pruning literature, e.g. Rethinking the Value of Network Pruning), measured by forward hooks on one input: dense
counts every weight, nonzero counts only weights that are not zero (what a sparse kernel would execute).
"""
from __future__ import annotations

import torch
from torch import nn

from ..targets import is_hf_conv1d


def count_params(model: nn.Module) -> dict[str, int]:
    """Total and nonzero parameters of the whole model."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"total": total, "nonzero": nonzero}


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Dense and nonzero multiply-accumulates of the weight layers for one input of ``input_shape`` (all
    zeros of ``dtype``: int64 token ids for a language model): convolutions, Linear, Hugging Face Conv1D and
    nn.MultiheadAttention's projections. Products between activations (attention scores) use no weight and
    are not counted."""
    totals = {"dense": 0, "nonzero": 0}

    def add(rows: int, w: torch.Tensor) -> None:
        totals["dense"] += rows * w.numel()
        totals["nonzero"] += rows * int((w != 0).sum())

    def hook(module, args, kwargs, output):
        if isinstance(module, nn.MultiheadAttention):  # it reads its projections itself; out_proj is never called
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args):]])[:3]
            for t, w in zip((q, k, v), _mha_projections(module)):
                add(t.numel() // t.shape[-1], w)
            add(q.numel() // q.shape[-1], module.out_proj.weight)
            return
        out = output[0] if isinstance(output, tuple) else output
        channels = out.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else out.shape[-1]
        add(out[0].numel() // channels, module.weight)  # each weight used once per output position (row)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)) or is_hf_conv1d(m)]
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return totals


def _mha_projections(m: nn.MultiheadAttention) -> list[torch.Tensor]:
    """The query, key and value projection weights (rows of the packed in_proj_weight, or the separate ones)."""
    if m.in_proj_weight is not None:
        return list(m.in_proj_weight.chunk(3, dim=0))
    return [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]
