"""Which units of structure a model has, found once: transformer units for a transformer of a known layout, else
the channels Torch-Pruning traces, each removable group then shrunk once on a copy (:mod:`.probe`) before any
selection relies on it."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from ..engine.allocation import Uniform
from ..errors import ConfigError
from ..inputs import Inputs, tensors
from .channels import ChannelGroup
from .coupling import ChannelUnits
from .families import FAMILIES
from .probe import probe_groups
from .recurrent import RecurrentLayer
from .transformer import transformer_units

# {architecture key: (groups, norm_after, recurrent)} of the architectures this process traced, most recent last.
# Why process-wide: every stage of a run builds its own Pruner on a fresh model (round k, the summary), and a trace
# plus its probe is most of a channel method's set-up. Passing the structure from stage to stage would retire it.
_TRACED: dict[str, tuple[list[ChannelGroup], dict[str, str], list[RecurrentLayer]]] = {}


def _architecture(model: nn.Module, example_inputs: Inputs, ignored: list[str]) -> str:
    """What a trace depends on: every module's name and class, every parameter's name and shape, the example
    inputs' shapes and dtypes, the ignored layers."""
    import hashlib

    lines = [f"{n}:{type(m).__module__}.{type(m).__qualname__}" for n, m in model.named_modules()]
    lines += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    lines += [f"{tuple(t.shape)}:{t.dtype}" for t in tensors(example_inputs)] + ignored
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def channel_units(model: nn.Module, example_inputs: Inputs) -> ChannelUnits:
    """The traced channels of ``model``, their groups probed (:func:`.probe.probe_groups`); an architecture this
    process traced before gets its groups without a second trace or probe (the next round's model, the summary's:
    every stage of a run builds its own Pruner on its own copy of the model)."""
    units = ChannelUnits(model, example_inputs, trace=False)
    key = _architecture(model, example_inputs, units.ignored)
    if key in _TRACED:
        units.adopt(*_TRACED[key])
        return units
    units.trace(example_inputs)
    probe_groups(units, model, example_inputs)  # each removable group shrunk once on a copy: failures blocked
    _TRACED[key] = (units.groups, units.norm_after, units.recurrent)  # only probed groups are reused
    while len(_TRACED) > 8:
        _TRACED.pop(next(iter(_TRACED)))
    return units


def structure_for(model: nn.Module, params: Mapping[str, Tensor], method, example_inputs: Inputs):
    """The units of structure a channel method chooses from: :class:`TransformerUnits` for a transformer of a
    known layout, else the traced channels (:func:`channel_units`). Built once per Pruner."""
    kinds = getattr(method, "unit_kinds", None)
    found = transformer_units(model, params, kinds, example_inputs, getattr(method, "expert_score", "criterion"),
                              getattr(method, "round_to", 1), getattr(method, "kind_sparsity", None),
                              getattr(method, "score_from", "all"), getattr(method, "compensate", "none") == "bias")
    if found is None:
        if kinds is not None:
            raise ConfigError(f"units {', '.join(kinds)} are read from the blocks of Hugging Face transformers of a "
                              f"known layout ({', '.join(sorted(FAMILIES))}) or LLaMA-shaped ones (q/k/v/o and "
                              "gate/up/down projections in model.layers); this model is neither: use a channel "
                              "method without units")
        return channel_units(model, example_inputs)
    per_block = sorted({g.kind for g in found.groups} & {"mlp", "heads", "experts"})
    if not isinstance(method.allocation_, Uniform) and per_block:
        raise ConfigError(f"allocation {method.allocation_.registered_name} would give blocks different counts of "
                          f"{per_block[0]} units, and transformers builds a {found.family.name} model with one count "
                          "for every block: use allocation uniform")
    return found
