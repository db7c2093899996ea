"""Hidden units of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` as a unit of structure, and the smaller module they make.

Unit j of layer l, direction d of a recurrent module with hidden size H and G gate blocks (LSTM 4: i, f, g, o;
GRU 3: r, z, n; RNN 1) owns rows g H + j (every gate g) of ``weight_ih_l{l}{s}`` and ``weight_hh_l{l}{s}``
(s = ``_reverse`` for d = 1), and the same entries of both biases (held at zero as companions). With those at
zero the unit's state stays zero from a zero initial state: LSTM c_t = f c_{t-1} + i tanh(0) = 0 and
h_t = o tanh(c_t) = 0; GRU n_t = tanh(0 + r (0 + 0)) = 0 and h_t = (1 - z) n_t + z h_{t-1} = 0; RNN
h_t = tanh(0) = relu(0) = 0. Its readers (column j of the same direction's ``weight_hh``, column d H + j of the
next layer's ``weight_ih`` in both directions, and for the last layer whatever reads the module's output at
channel d H + j) then multiply zeros, so the module without the unit computes the same outputs: the unit is
*removed* when all its rows are pruned, as a channel is when all its producers' rows are.

One module holds one hidden size for every layer and direction, so each (layer, direction) keeps the same number
of units: the allocation counts units per module and the selector keeps that many per (layer, direction).

Who reads the module's output comes from Torch-Pruning's graph, traced with the module replaced by a stand-in
(a linear map from ``input_size`` to D H): traced as it is, the graph walks into the module's own operations
(on a 2-layer bidirectional GRU: an IndexError in its index mapping; an LSTM blocks every channel feeding it).
A module keeps its units, with the reason, when the model reads its final state (h_n, c_n: those readers are
not in the graph), when its output reaches the model's outputs or another layer's output is added to it, or
with ``proj_size``. Written here because neither torch nor Torch-Pruning removes hidden units of stacked or
bidirectional recurrent layers (Torch-Pruning's LSTM pruner handles one layer and one direction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShrinkError

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


@dataclass
class RecurrentLayer:
    """The hidden units of one recurrent module: (layers x directions) blocks of ``hidden`` units each."""

    module: str
    hidden: int
    layers: int
    directions: int
    gates: int
    blockers: list[str] = field(default_factory=list)
    # the layers reading the module's output (their input channels go with the units, cut by Torch-Pruning)
    readers: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> int:
        return self.layers * self.directions

    def weights(self, b: int) -> tuple[str, str]:
        """(weight_ih, weight_hh) parameter names of block ``b`` = layer * directions + direction."""
        layer, d = divmod(b, self.directions)
        s = "_reverse" if d else ""
        return f"{self.module}.weight_ih_l{layer}{s}", f"{self.module}.weight_hh_l{layer}{s}"

    def biases(self, b: int) -> tuple[str, str]:
        ih, hh = self.weights(b)
        return ih.replace(".weight_", ".bias_"), hh.replace(".weight_", ".bias_")

    def rows(self, units: Tensor) -> Tensor:
        """The gate rows of ``units`` (indices within one block), gate-major: (G, len(units))."""
        return torch.arange(self.gates)[:, None] * self.hidden + units.cpu()[None]

    def _per_unit(self, t: Tensor, reduce) -> Tensor:
        """(hidden,) ``reduce`` over the gates of a (G H,) per-row tensor."""
        return reduce(t.reshape(self.gates, self.hidden), 0)

    def alive(self, masks: Mapping[str, Tensor]) -> Tensor:
        """(blocks, hidden) bool: units with a row entry alive in the masks of their weights."""
        out = torch.zeros(self.blocks, self.hidden, dtype=torch.bool)
        for b in range(self.blocks):
            for name in self.weights(b):
                rows = masks[name].reshape(masks[name].shape[0], -1).any(1).cpu()
                out[b] |= self._per_unit(rows, lambda t, d: t.any(d))
        return out

    def scores(self, row_scores: Mapping[str, Tensor]) -> Tensor:
        """(blocks, hidden) float: the sum of each unit's rows' scores over both its weights."""
        return torch.stack([sum(self._per_unit(row_scores[n].double().cpu(), lambda t, d: t.sum(d))
                                for n in self.weights(b)) for b in range(self.blocks)]).float()

    def without(self, masks: Mapping[str, Tensor], kept: Tensor, revive: bool = False) -> dict[str, Tensor]:
        """New masks of the module's weights with the rows of the units not ``kept`` ((blocks, hidden)) pruned."""
        out = {}
        for b in range(self.blocks):
            rows = self.rows((~kept[b]).nonzero().flatten()).reshape(-1)
            for n in self.weights(b):
                m = torch.ones_like(masks[n]) if revive else masks[n].clone()
                m[rows.to(m.device)] = False
                out[n] = m
        return out

    def companion_masks(self, masks: Mapping[str, Tensor], named: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks (False: held at zero) of the biases of removed units."""
        gone = ~self.alive(masks)
        out = {}
        for b in range(self.blocks):
            rows = self.rows(gone[b].nonzero().flatten()).reshape(-1)
            for n in self.biases(b):
                if n in named and len(rows):
                    keep = torch.ones(named[n].shape, dtype=torch.bool, device=named[n].device)
                    keep[rows.to(keep.device)] = False
                    out[n] = keep
        return out


def recurrent_modules(model: nn.Module) -> dict[str, nn.RNNBase]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.RNNBase) and type(m) in _GATES}


class _RecurrentStandIn(nn.Module):
    """What Torch-Pruning traces in place of a recurrent module: its input to its output width by one linear
    map, and zero final states of the right shapes (the name's underscore marks it, as Torch-Pruning's own
    operations are marked, as exact for a channel passing through it; see ``channels._exact_through``)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = (rnn,)  # not a submodule: the trace must not see its parameters
        d = 2 if rnn.bidirectional else 1
        p = next(rnn.parameters())
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d * rnn.hidden_size, rnn.input_size, generator=g).to(p))

    def forward(self, input, hx=None):
        rnn = self.rnn[0]
        if not isinstance(input, Tensor):
            raise ConfigError("recurrent layers fed packed sequences cannot be traced; pass padded tensors")
        out = F.linear(input, self.weight)
        d = 2 if rnn.bidirectional else 1
        batch = () if input.dim() == 2 else (input.shape[0 if rnn.batch_first else 1],)
        h = torch.zeros(rnn.num_layers * d, *batch, rnn.hidden_size, dtype=out.dtype, device=out.device)
        return out, ((h, h.clone()) if isinstance(rnn, nn.LSTM) else h)


def stand_in_pruner():
    """A Torch-Pruning pruner for :class:`_RecurrentStandIn`: input channels go from the real module's first
    layer (both directions); output channels only from the stand-in (the module itself is rebuilt by
    :func:`shrink_recurrent`, after Torch-Pruning has cut its readers)."""
    from torch_pruning.pruner.function import BasePruningFunc

    class StandInPruner(BasePruningFunc):
        TARGET_MODULES = None

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[0])) - {int(i) for i in idxs})
            layer.weight = nn.Parameter(layer.weight.detach()[keep])
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[1])) - {int(i) for i in idxs})
            layer.weight = nn.Parameter(layer.weight.detach()[:, keep])
            rnn = layer.rnn[0]
            for s in ("", "_reverse") if rnn.bidirectional else ("",):
                w = getattr(rnn, f"weight_ih_l0{s}")
                setattr(rnn, f"weight_ih_l0{s}", nn.Parameter(w.detach()[:, keep].clone()))
            rnn.input_size = len(keep)
            rnn._init_flat_weights()
            return layer

        def get_out_channels(self, layer):
            return layer.weight.shape[0]

        def get_in_channels(self, layer):
            return layer.weight.shape[1]

    return StandInPruner()


def swap_in(model: nn.Module) -> dict[nn.Module, str]:
    """Replace every recurrent module of ``model`` with a stand-in, in place; {stand-in: module name}."""
    out = {}
    for name, m in recurrent_modules(model).items():
        parent, _, child = name.rpartition(".")
        s = _RecurrentStandIn(m)
        setattr(model.get_submodule(parent) if parent else model, child, s)
        out[s] = name
    return out


def swap_out(model: nn.Module, stand_ins: Mapping[nn.Module, str]) -> None:
    for s, name in stand_ins.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, s.rnn[0])


def reads_final_state(model: nn.Module, inputs) -> set[str]:
    """The recurrent modules whose final state (h_n, or an LSTM's (h_n, c_n)) the model's outputs depend on:
    one forward pass with each state replaced by a fresh leaf, and autograd asked which leaves it reached."""
    from ..inputs import call, tensors

    leaves: dict[str, list[Tensor]] = {}

    def swap(name):
        def hook(module, args, out):
            states = out[1] if isinstance(out[1], tuple) else (out[1],)
            new = tuple(s.detach().clone().requires_grad_(True) for s in states)
            leaves[name] = list(new)
            return out[0], (new if isinstance(out[1], tuple) else new[0])
        return hook
    handles = [m.register_forward_hook(swap(n)) for n, m in recurrent_modules(model).items()]
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outs = [t for t in tensors(call(model, inputs)) if t.grad_fn is not None]
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    flat = [(n, t) for n, ts in leaves.items() for t in ts]
    if not outs or not flat:
        return set()
    total = sum(t.float().sum() for t in outs)
    grads = torch.autograd.grad(total, [t for _, t in flat], allow_unused=True)
    return {n for (n, _), g in zip(flat, grads) if g is not None}


def recurrent_layers(model: nn.Module, dg, stand_ins: Mapping[nn.Module, str], exact, layer_types,
                     final_state: set[str]) -> list[RecurrentLayer]:
    """The :class:`RecurrentLayer` of every recurrent module, with the layers reading its output (from the traced
    graph ``dg``) and the reasons it cannot lose units (``exact``: whether a removed channel passes a module
    unchanged)."""
    out = []
    for s, name in stand_ins.items():
        rnn = s.rnn[0]
        layer = RecurrentLayer(name, rnn.hidden_size, rnn.num_layers, 2 if rnn.bidirectional else 1, _GATES[type(rnn)])
        if getattr(rnn, "proj_size", 0):
            layer.blockers.append("LSTM proj_size")
        if name in final_state:
            layer.blockers.append("its final state read by the model")
        if s not in dg.module2node:
            if name not in final_state:
                layer.blockers.append("its output not read")
            out.append(layer)
            continue
        group = dg.get_pruning_group(s, dg.get_pruner_of_module(s).prune_out_channels, list(range(s.weight.shape[0])))
        names = {m: n for n, m in model.named_modules()}
        for item in list(group)[1:]:
            mod, handler = item.dep.target.module, item.dep.handler.__name__
            if isinstance(mod, layer_types) and handler.endswith("in_channels"):
                if getattr(mod, "groups", 1) > 1:
                    layer.blockers.append("grouped Conv")
                layer.readers.append(names.get(mod, "?"))
            elif handler.endswith("out_channels") and (isinstance(mod, layer_types) or mod in stand_ins):
                layer.blockers.append("another layer's output added to it")
            elif not exact(mod):
                layer.blockers.append(type(mod).__name__)
        if not layer.readers:
            layer.blockers.append("its output the model's output")
        out.append(layer)
    return out


def shrink_recurrent(model: nn.Module, layer: RecurrentLayer, kept: Tensor) -> nn.RNNBase:
    """A smaller module of the same class holding the ``kept`` ((blocks, hidden) bool, the same count in every
    block) units of ``model``'s module ``layer.module``, on its device; its readers outside the module are not
    changed here. The decisions are read once, here, as lists; the copying then reads nothing back."""
    return build_recurrent(model.get_submodule(layer.module), layer, kept_units(layer, kept))


def kept_units(layer: RecurrentLayer, kept: Tensor) -> list[list[int]]:
    """The kept unit indices of every block, from the (blocks, hidden) decisions; ShrinkError unless every block
    keeps the same number, at least one."""
    idx = [kept[b].nonzero().flatten().tolist() for b in range(layer.blocks)]
    counts = [len(i) for i in idx]
    if len(set(counts)) != 1:
        raise ShrinkError(f"{layer.module} keeps {counts} units in its layers and directions; one module "
                          "holds one hidden size, so each must keep the same number")
    if counts[0] == 0:
        raise ShrinkError(f"the masks remove every hidden unit of {layer.module}; the model would be cut in two")
    return idx


def build_recurrent(rnn: nn.RNNBase, layer: RecurrentLayer, idx: list[list[int]]) -> nn.RNNBase:
    """The module of :func:`shrink_recurrent` from the kept units of each block (:func:`kept_units`)."""
    extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    p = next(rnn.parameters())
    small = type(rnn)(rnn.input_size, len(idx[0]), num_layers=rnn.num_layers, bias=rnn.bias,
                      batch_first=rnn.batch_first, dropout=rnn.dropout, bidirectional=rnn.bidirectional,
                      device=p.device, dtype=p.dtype, **extra)
    units = [torch.tensor(i, dtype=torch.long, device=p.device) for i in idx]
    with torch.no_grad():
        for b in range(layer.blocks):
            lay = b // layer.directions
            rows = (torch.arange(layer.gates, device=p.device)[:, None] * layer.hidden + units[b][None]).reshape(-1)
            # layer l > 0 reads the kept units of both directions of layer l - 1, concatenated
            below = torch.cat([units[(lay - 1) * layer.directions + d] + d * layer.hidden
                               for d in range(layer.directions)]) if lay else None
            for name in layer.weights(b) + layer.biases(b):
                attr = name.rpartition(".")[2]
                if not hasattr(rnn, attr):
                    continue
                w = getattr(rnn, attr)[rows]
                if attr.startswith("weight_hh"):
                    w = w[:, units[b]]
                elif attr.startswith("weight_ih") and below is not None:
                    w = w[:, below]
                getattr(small, attr).copy_(w)
    return small
