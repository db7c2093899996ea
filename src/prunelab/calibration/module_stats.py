"""Statistics of modules that are not targets: each block's influence (ShortGPT) and each experts module's
routing (REAP, frequency). Keyed by module name, measured over whole forward passes (never sequentially)."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .observers import _REENTERED, InputStats, expert_call


def influence_hooks(blocks: Mapping[str, nn.Module], stats: dict[str, InputStats]) -> dict[nn.Module, Callable]:
    """Forward hooks summing, per block (by name), cos(input, output) over tokens of its hidden states: the
    block's first tensor input (or ``hidden_states``) and its first tensor output (Men et al., "ShortGPT:
    Layers in Large Language Models are More Redundant Than You Expect", 2024, score a block by one minus
    the mean of this cosine)."""
    def hook(name):
        def fn(module, args, kwargs, output):
            x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")
            y = output if isinstance(output, Tensor) else output[0]
            if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape != y.shape:
                raise ConfigError(f"block {name}'s input and output hidden states are not two tensors of one "
                                  "shape: its influence cannot be measured")
            c = F.cosine_similarity(x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double(), dim=1)
            s = stats.setdefault(name, InputStats(cos=torch.zeros(1, dtype=torch.float64, device=c.device)))
            s.rows += c.numel()
            s.cos += c.sum()
        return fn
    return {m: hook(n) for n, m in blocks.items()}


def routing_hooks(experts: Mapping[str, nn.Module], stats: dict[str, InputStats]) -> dict[nn.Module, Callable]:
    """Forward hooks on fused experts modules (transformers 5: ``forward(hidden_states, top_k_index,
    top_k_weights)``), keyed by module name: per expert, the tokens routed to it (``routed``) and REAP's sum
    (Lasby et al. 2025, "REAP the Experts"): the router weight times the norm of the expert's output over those
    tokens, each expert's output recomputed by the module itself on its tokens alone (one more expert pass)."""
    def hook(name):
        def fn(module, args, kwargs, output):
            x, index, weight = expert_call(args, kwargs)
            if x is None or index is None or weight is None:
                raise ConfigError(f"{name} is not called as experts(hidden_states, top_k_index, top_k_weights): "
                                  "its routing cannot be measured: rank its experts with expert_score criterion")
            n = int(module.gate_up_proj.shape[0])
            s = stats.setdefault(name, InputStats(routed=torch.zeros(n, dtype=torch.float64, device=x.device),
                                                  reap=torch.zeros(n, dtype=torch.float64, device=x.device)))
            _REENTERED.add(id(module))  # the recomputation calls the module, whose hook must stay silent
            try:
                for e in index.unique().tolist():
                    tok, slot = (index == e).nonzero(as_tuple=True)
                    if not 0 <= e < n or not len(tok):
                        continue
                    ones = torch.ones(len(tok), 1, dtype=weight.dtype, device=weight.device)
                    out = module(x[tok], torch.full((len(tok), 1), e, dtype=index.dtype, device=index.device), ones)
                    s.routed[e] += len(tok)
                    s.reap[e] += (weight[tok, slot].double() * out.double().norm(dim=-1)).sum()
            finally:
                _REENTERED.discard(id(module))
            s.rows += x.shape[0]
        return fn
    return {m: hook(n) for n, m in experts.items()}
