"""Experts as a unit of structure: a mixture-of-experts block's expert e is slab e of its fused expert tensors
(``gate_up_proj``, ``down_proj``, their biases) with row e of its router (and the router's bias entry). Shared
experts are not units: they stay.

A removed expert must never be chosen, as in the model without it. Zeroing its router row would give it logit 0,
which softmax still weighs and top-k may still pick; so while experts are removed the masked model's routers
are *routing-aware* (:class:`Routing`): the router's logits for removed experts are -inf, set where the router
computes them (the ``F.linear`` of the hidden states by its weight, caught by a ``TorchFunctionMode`` for the
router's call only, so every family's own softmax, top-k and renormalisation run unchanged after it). The
masked model then computes what the model with fewer experts computes (the shrink check proves it in float64).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .families import Family


def expert_count(model: nn.Module, fam: Family, pre: str) -> int:
    return int(model.get_submodule(pre + fam.experts).gate_up_proj.shape[0])


def router_name(fam: Family) -> str:
    """The router, relative to a block: the first up-side module of an MoE layout (Mixtral's ``mlp.gate``)."""
    return fam.up[0]


def top_k(model: nn.Module) -> int | None:
    c = model.config
    value = getattr(c, "num_experts_per_tok", None) or getattr(c, "top_k", None)
    return int(value) if isinstance(value, int) else None


def expert_parts(model: nn.Module, fam: Family, pre: str, part_cls) -> list:
    """The parts of each expert of the block at ``pre``: slab e of every 3-D expert tensor (and 2-D bias), row
    e of the router's weight and bias."""
    n = expert_count(model, fam, pre)
    e = torch.arange(n)
    experts = model.get_submodule(pre + fam.experts)
    parts = [part_cls(f"{pre}{fam.experts}.{name}", 0, e[:, None], e)
             for name, p in experts.named_parameters(recurse=False) if p.dim() in (2, 3) and p.shape[0] == n]
    router = model.get_submodule(pre + router_name(fam))
    parts += [part_cls(f"{pre}{router_name(fam)}.{name}", 0, e[:, None], e)
              for name in ("weight", "bias") if isinstance(getattr(router, name, None), Tensor)]
    # per-expert buffers of the router (DeepSeek-V3's e_score_correction_bias) go with their experts
    parts += [part_cls(f"{pre}{router_name(fam)}.{name}", 0, e[:, None], e)
              for name, b in router.named_buffers(recurse=False) if b.dim() >= 1 and b.shape[0] == n]
    return parts


class _MaskLogits(TorchFunctionMode):
    """Within a router's call: ``F.linear(x, router.weight)`` returns -inf for the removed experts' logits."""

    def __init__(self, weight: Tensor, removed: Tensor) -> None:
        super().__init__()
        self.weight, self.removed = weight, removed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        w = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
        # the router's weight, or a cast of it (DeepSeek-V3 multiplies by weight.type(float32)): same shape
        if func is F.linear and isinstance(w, Tensor) and (w is self.weight or w.shape == self.weight.shape):
            out = out.index_fill(-1, self.removed.to(out.device), float("-inf"))
        return out


class Routing:
    """Routing-aware routers for removed experts (see the module docstring). ``removed`` maps a router's name
    to the removed experts' indices; the hooks read it by name, so a deep copy of the model (the masked reference
    of a shrink check) routes the same way. Hooks go on a router the first time it has removed experts. A
    router whose logits are not an ``F.linear`` by its weight keeps routing to zeroed experts, which the shrink
    check then refuses."""

    def __init__(self) -> None:
        self.removed: dict[str, Tensor] = {}
        self._modes: dict[str, _MaskLogits] = {}
        self._hooked: set[int] = set()

    def update(self, model: nn.Module, removed: Mapping[str, Tensor]) -> None:
        """Route ``model``'s routers around ``removed`` ({router name: expert indices}) from now on."""
        self.removed = {k: v.clone() for k, v in removed.items() if len(v)}
        for name in self.removed:
            router = model.get_submodule(name)
            if id(router) not in self._hooked:
                router.register_forward_pre_hook(self._enter(name))
                router.register_forward_hook(self._exit(name), always_call=True)
                self._hooked.add(id(router))

    def _enter(self, name: str):
        def hook(module, args):
            gone = self.removed.get(name)
            if gone is not None and len(gone):
                mode = _MaskLogits(module.weight, gone)
                mode.__enter__()
                self._modes[name] = mode
        return hook

    def _exit(self, name: str):
        def hook(module, args, output):
            mode = self._modes.pop(name, None)
            if mode is not None:
                mode.__exit__(None, None, None)
        return hook
