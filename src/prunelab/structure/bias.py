"""Bias compensation (FLAP): a removed MLP channel or head leaves its mean contribution in the reader's bias.

An, Zhao, Yu, Tang, Wang, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (FLAP, AAAI
2024): when input column j of a layer y = W x + b goes, the layer's output changes by W_:j x_j; over the
calibration tokens its expected change is W_:j E[x_j], which the bias can absorb: b += W_:j E[x_j]. What is left
is W_:j (x_j - E[x_j]), whose size is what the ``fluctuation`` criterion ranks by. Written from the paper and the
authors' ``compress`` (``output_bias = ((mean_inp * ~mask) @ W.T)``, added to the output projection's and down
projection's bias). The readers are the layers whose input columns are the units (the down projection of the MLP
channels, the output projection of the heads).

LLaMA-style projections have no bias. The model must then gain one the config can state, so that the smaller
model still loads as the same transformers class: :func:`carry_biases` asks transformers itself, building the
model class on the meta device with the config's flag (``mlp_bias``, ``attention_bias``) set, and gives this
model exactly the zero biases that build has (LLaMA's ``attention_bias`` covers q, k, v and o); a config that
cannot state one (no such flag, or a class that ignores it) is refused in one sentence.
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .families import Family
from .units import UnitGroup, removed_units

FLAGS = {"mlp": "mlp_bias", "heads": "attention_bias"}  # the config field that gives a kind's reader its bias


def _reader(fam: Family, kind: str) -> str | None:
    return fam.down if kind == "mlp" else fam.o


def _flagged(model: nn.Module, flag: str) -> nn.Module:
    """``model``'s class built on the meta device with ``config.<flag>`` true (no memory, no weights)."""
    config = copy.deepcopy(model.config)
    setattr(config, flag, True)
    with torch.device("meta"):
        return type(model)(config)


def carry_biases(model: nn.Module, fam: Family, kinds: Iterable[str]) -> list[str]:
    """Give the readers of ``kinds`` (``mlp``, ``heads``) in every block a bias the config states, zero; returns
    the names of the biases added (none where the readers have one, as GPT-2's). ConfigError when the config
    cannot carry one, before anything changes."""
    plan: list[tuple[str, nn.Module]] = []
    for kind in kinds:
        reader = _reader(fam, kind) if kind in FLAGS else None
        if reader is None:
            continue
        first = f"{fam.layers}.0.{reader}"
        if getattr(model.get_submodule(first), "bias", None) is not None:
            continue
        flag = FLAGS[kind]
        ref = _flagged(model, flag) if hasattr(model.config, flag) else None
        if ref is None or getattr(ref.get_submodule(first), "bias", None) is None:
            raise ConfigError(f"bias compensation of {kind} units adds a bias to {reader}, and "
                              f"{type(model.config).__name__} cannot state one (no {flag} field that gives it one): "
                              "the smaller model would not load as the same class; use compensate: none")
        plan.append((flag, ref))
    added = []
    for flag, ref in plan:
        for name, m in ref.named_modules():
            mine = model.get_submodule(name) if isinstance(m, nn.Linear) and m.bias is not None else None
            if isinstance(mine, nn.Linear) and mine.bias is None:
                w = mine.weight
                mine.bias = nn.Parameter(torch.zeros(mine.out_features, dtype=w.dtype, device=w.device))
                added.append(f"{name}.bias")
        setattr(model.config, flag, True)
    return added


def adopt_biases(model: nn.Module, fam: Family, names: set[str]) -> set[str]:
    """Biases a checkpoint holds that ``model`` lacks, added (zero) where bias compensation would add them:
    a model built again from its recipe meets its compensated checkpoint. Returns the names added."""
    kinds = [k for k in FLAGS if any(n.startswith(f"{fam.layers}.") and n.endswith(f".{_reader(fam, k)}.bias")
                                     for n in names)]
    return set(carry_biases(model, fam, kinds)) if kinds else set()


def compensation(groups: list[UnitGroup], params: Mapping[str, Tensor], old: Mapping[str, Tensor],
                 new: Mapping[str, Tensor], stats: Mapping, reader_dim: int) -> dict[str, Tensor]:
    """``{reader bias name: the amount to add}`` for the MLP channels and heads ``new`` removes that ``old`` had
    not: the reader's columns of those units times the mean of their inputs over the calibration tokens
    (``stats[reader weight].mean()``, kind ``sums``), computed from the weights before they are zeroed.
    ``reader_dim``: the weights' input dimension (1 for (out, in), 0 for GPT-2's Conv1D)."""
    out: dict[str, Tensor] = {}
    for g in groups:
        if g.kind not in FLAGS:
            continue
        now = removed_units(g, new) & ~removed_units(g, old)
        if not now.any():
            continue
        for p in g.parts:
            if p.dim != reader_dim or p.param not in params or not p.param.endswith(".weight"):
                continue
            s = stats.get(p.param) if stats is not None else None
            if s is None or getattr(s, "sum", None) is None:
                raise ConfigError(f"bias compensation needs the mean input of {p.param} (calibration kind sums)")
            cols = p.index[now[p.units]].reshape(-1)
            w = params[p.param].detach().index_select(p.dim, cols.to(params[p.param].device)).double()
            mu = s.mean().to(w.device)[cols.to(w.device)]
            shift = w @ mu if p.dim == 1 else mu @ w
            name = p.param[: -len("weight")] + "bias"
            out[name] = out[name] + shift if name in out else shift
    return {n: t.float() for n, t in out.items()}
