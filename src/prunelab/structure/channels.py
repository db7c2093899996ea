"""Channels: which output channels are coupled, and what else must go to zero when a channel is removed.

A channel of a Conv/Linear layer (or Hugging Face Conv1D, for which a Torch-Pruning pruner is given here) can be
physically removed only together with every layer coupled to it
(the BatchNorm after it, the other branches of a residual add, the consumers' input slices). The coupling
comes from Torch-Pruning's dependency graph, traced once on example inputs; prunelab does not re-implement
it. A channel is *removed* when every producer in its group (the Conv/Linear layers writing it) has that
output row pruned in the masks. For the masked model to compute exactly what the shrunk model computes,
the removed channel's *companions* must be zero too: the producers' bias entries and the BatchNorm scale
and shift; then the channel outputs zero everywhere and removing it changes nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError, PrunelabError, first_line
from ..inputs import Inputs, call, output_layers, shared_layers, tensors
from .recurrent import (RecurrentLayer, reads_final_state, recurrent_layers, recurrent_modules, stand_in_pruner,
                              swap_in, swap_out)
from ..targets import is_hf_conv1d
from ..engine.topk import any_rows
from .trace_budget import trace_budget

_NORMS = (nn.modules.batchnorm._BatchNorm,)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class ChannelGroup:
    """One set of coupled output channels, indexed by the root layer's output channel."""

    root: str
    size: int
    producers: dict[str, Tensor] = field(default_factory=dict)  # layer name -> its channel index per root channel
    norms: dict[str, Tensor] = field(default_factory=dict)      # BatchNorm name -> channel index per root channel
    # members through which a removed channel would still change the outputs (a LayerNorm's statistics over the
    # channels, an added position embedding ...): their type names; such a group's channels are not removable
    blockers: list[str] = field(default_factory=list)
    # a grouped (not depthwise) convolution among the members: ("producer" | "consumer", its channel index per
    # root channel, its groups, its channels); channels must then go the same number per conv group
    # (producer) or at the same positions in every conv group (consumer)
    grouped: list[tuple[str, Tensor, int, int]] = field(default_factory=list)
    # attention q, k, v projections whose forward splits the channels into heads of this size: channels then
    # go by whole heads (the same heads in q, k and v), which is exact when the head size stays fixed
    head_dim: int | None = None

    @property
    def removable(self) -> bool:
        return not self.blockers


class ChannelGraph:
    """The coupled output-channel groups of ``model`` (traced with Torch-Pruning on ``example_inputs``).

    ``ignored``: module names whose outputs must keep every channel; default the layers whose outputs reach the
    model's outputs (:func:`prunelab.inputs.output_layers`: a classifier, a detector's class and box predictors,
    a segmentation head and its auxiliary one), found from the autograd graph, not by name; else the last
    Conv/Linear layer in registration order.

    ``trace=False`` finds the ignored layers only; :meth:`adopt` then gives the graph groups found on another
    model of the same architecture (names and indices: the same for every model of it), without Torch-Pruning's
    graph (``dg`` None), which only :func:`~prunelab.structure.surgery.shrink` needs and traces for itself.
    The graph reads the model; it never changes it.
    """

    def __init__(self, model: nn.Module, example_inputs: Inputs, ignored: list[str] | None = None,
                 trace: bool = True) -> None:
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())
        hf = {type(m) for m in model.modules() if is_hf_conv1d(m)}
        self.layer_types = _LAYERS + tuple(hf)
        self.transposed = {n for n, m in model.named_modules() if is_hf_conv1d(m)}  # weights stored (in, out)
        layers = [n for n, m in model.named_modules() if isinstance(m, self.layer_types)]
        if not layers:
            raise ConfigError("the model has no Conv or Linear layer whose channels could be removed")
        if ignored is None:  # the layers that make the model's outputs (classes, boxes, a segmentation map) stay whole
            try:
                ignored = output_layers(model, example_inputs, self.layer_types) or [layers[-1]]
            except Exception:  # inputs the model rejects: the trace below says so in its sentence
                ignored = [layers[-1]]
        ignored = list(ignored)
        self.ignored = ignored
        unknown = [n for n in ignored if n not in self.modules]
        if unknown:
            raise ConfigError(f"ignored layers not in the model: {', '.join(unknown)}")
        self.dg = None
        if trace:
            self.trace(example_inputs)

    def trace(self, example_inputs: Inputs) -> None:
        """Trace the model with Torch-Pruning and find its groups (within the trace budget)."""
        import torch_pruning as tp

        hf = {type(m) for m in self.model.modules() if is_hf_conv1d(m)}
        with trace_budget(self.model):  # minutes on some models, or out of memory: one sentence past the budget
            try:
                self._trace(tp, self.model, example_inputs, hf, self.ignored)
            except (PrunelabError, MemoryError):
                raise
            except Exception as exc:  # Torch-Pruning's index mapping on layers it does not know (Mamba-2's
                # fused in_proj: "Overflow when unpacking long long", Jamba: IndexError): one sentence
                raise ConfigError(f"Torch-Pruning traced this model, but its channel groups could not be read "
                                  f"({type(exc).__name__}: {first_line(exc, 120)}); "
                                  f"prune it with an unstructured method, or name the layers it stops at in "
                                  f"ignored_layers") from None

    def adopt(self, groups: list[ChannelGroup], norm_after: dict[str, str], recurrent: list[RecurrentLayer]) -> None:
        """Take the groups traced on another model of this architecture (no Torch-Pruning graph: ``dg`` None)."""
        self.dg = None
        self.groups, self.norm_after, self.recurrent = groups, norm_after, recurrent

    def _trace(self, tp, model: nn.Module, example_inputs: Inputs, hf: set, ignored: list[str]) -> None:
        was = model.training
        model.eval()
        try:
            final_state = reads_final_state(model, example_inputs) if recurrent_modules(model) else set()
        except Exception:  # inputs the model rejects: the trace below says so in its sentence
            final_state = set()
        stand_ins = swap_in(model)  # recurrent modules traced as one linear map each (see recurrent_units)
        try:
            # the inputs as the user has them (a tensor, a tuple, a dict of token ids ...) and every output tensor
            self.dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=call, output_transform=tensors, verbose=False,
                customized_pruners={**{cls: _hf_conv1d_pruner()() for cls in hf},
                                    **({type(next(iter(stand_ins))): stand_in_pruner()} if stand_ins else {})})
        except MemoryError:
            raise  # named by the budget
        except Exception as exc:  # tracing failures come from user models; name the cause in one line
            raise ConfigError(f"could not trace the model's channel dependencies: {exc}") from None
        finally:
            swap_out(model, stand_ins)
            model.train(was)
        self.stand_ins = {name: s for s, name in stand_ins.items()}
        self.recurrent: list[RecurrentLayer] = recurrent_layers(model, self.dg, stand_ins, _exact_through,
                                                                self.layer_types, final_state)
        self.groups: list[ChannelGroup] = []
        self.norm_after: dict[str, str] = {}  # layer name -> the BatchNorm that directly follows it
        # a layer called on several inputs (an RPN head over every FPN level) ties channels the graph, traced
        # through one call, does not couple: its groups stay whole (shrinking them broke Faster R-CNN's head)
        try:
            called, feeders = shared_layers(model, example_inputs, self.layer_types)
        except Exception:  # the trace above ran the model; a second run failing leaves nothing to add
            called, feeders = set(), set()
        for g in self.dg.get_all_groups(ignored_layers=[self.modules[n] for n in ignored],
                                        root_module_types=list(self.layer_types)):
            root = self.names[g[0].dep.target.module]
            group = ChannelGroup(root, len(g[0].idxs))
            split_heads = split_outputs = False
            for item in g:
                mod = item.dep.target.module
                tied = self.names.get(mod) in called or (self.names.get(mod) in feeders and
                                                          item.dep.handler.__name__.endswith("out_channels"))
                if tied and "a layer called several times" not in group.blockers:
                    group.blockers.append("a layer called several times")
                if not (_exact_through(mod) or isinstance(mod, self.layer_types)):
                    group.blockers.append(type(mod).__name__)
                elif _splits_heads(mod):
                    split_heads = True
                elif type(mod).__name__ == "_SplitOp":
                    split_outputs = True
                name = self.names.get(mod)
                out = item.dep.handler.__name__.endswith("out_channels")
                grouped_in = item.dep.handler.__name__.endswith("in_channels") and _grouped(mod)
                if name is None or not (out or grouped_in):
                    continue
                pos = torch.tensor([int(i) for i in item.root_idxs])
                idx = torch.empty(group.size, dtype=torch.long)
                idx[pos] = torch.tensor([int(i) for i in item.idxs])
                if _grouped(mod):
                    channels = mod.out_channels if out else mod.in_channels
                    group.grouped.append(("producer" if out else "consumer", idx, mod.groups, channels))
                if not out:
                    continue
                if isinstance(mod, self.layer_types):
                    group.producers[name] = idx
                elif isinstance(mod, _NORMS):
                    group.norms[name] = idx
            if len(group.grouped) > 1 or any(len(idx) != ch for _, idx, _, ch in group.grouped):
                group.blockers.append("grouped Conv (several, or partly coupled)")
            beyond = [n for n, idx in group.producers.items()
                      if len(idx) and int(idx.max()) >= (self.dg.get_out_channels(self.modules[n]) or len(idx))]
            if beyond:  # Torch-Pruning's mapping through a concatenation it does not follow (YOLOv8's C2f)
                group.blockers.append(f"channel indices beyond {beyond[0]}'s outputs")
            if split_heads:
                group.head_dim = None if split_outputs else self._head_dim(group)
                if group.head_dim is None:
                    group.blockers.append("attention heads")
            self.groups.append(group)
        for name, mod in self.modules.items():
            if isinstance(mod, self.layer_types):
                nxt = [n.module for n in self.dg.module2node[mod].outputs] if mod in self.dg.module2node else []
                if len(nxt) == 1 and isinstance(nxt[0], _NORMS):
                    self.norm_after[name] = self.names[nxt[0]]

    def _head_dim(self, group: ChannelGroup) -> int | None:
        """The head size of an attention whose q, k, v projections are this group's producers, read from their
        parent module (``attention_head_size`` in BERT-style, ``head_dim`` in LLaMA-style Hugging Face models,
        whose forward splits heads with a view of that size). None when the producers do not share one parent
        with such a size, or their channels are not whole heads."""
        parents = {name.rpartition(".")[0] for name in group.producers}
        if len(parents) != 1 or len(group.producers) < 2:
            return None
        parent = self.modules.get(next(iter(parents)))
        size = next((v for v in (vars(parent).get("attention_head_size"), vars(parent).get("head_dim"))
                     if isinstance(v, int) and v > 0), None)  # plain attributes of the module, not submodules
        return size if size and group.size % size == 0 else None

    @staticmethod
    def _row_alive(mask: Tensor) -> Tensor:
        return any_rows(mask)

    def removed(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{root: sorted root channel indices}`` of channels every producer of the group has pruned.

        Masks are keyed by weight name (``conv1.weight``); a group with a producer that has no mask keeps
        all its channels, and so does a group whose channels are not removable (see ``ChannelGroup.blockers``).
        """
        out = {}
        for g in self.groups:
            if not g.removable:
                continue
            dead = torch.ones(g.size, dtype=torch.bool)
            for layer, idx in g.producers.items():
                m = masks.get(f"{layer}.weight")
                if m is None:
                    dead[:] = False
                    break
                dead &= ~self._row_alive(m.transpose(0, 1) if layer in self.transposed else m).cpu()[idx]
            if dead.any():
                out[g.root] = dead.nonzero().flatten()
        return out

    def companion_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks for the biases and BatchNorm scale/shift of removed channels (False = held at zero)."""
        params = dict(self.model.named_parameters())
        removed = self.removed(masks)
        out: dict[str, Tensor] = {}
        for g in self.groups:
            if g.root not in removed:
                continue
            chans = removed[g.root]
            for layer, idx in g.producers.items():
                _drop(out, params, f"{layer}.bias", idx[chans])
            for norm, idx in g.norms.items():
                _drop(out, params, f"{norm}.weight", idx[chans])
                _drop(out, params, f"{norm}.bias", idx[chans])
        for r in self.recurrent_layers(masks):
            out.update(r.companion_masks(masks, params))
        return out

    def recurrent_layers(self, targets: Mapping[str, Tensor]) -> list[RecurrentLayer]:
        """The recurrent modules that can lose hidden units: nothing blocks them and all their weights are
        among ``targets``."""
        return [r for r in self.recurrent if not r.blockers
                and all(n in targets for b in range(r.blocks) for n in r.weights(b))]


@functools.cache
def _hf_conv1d_pruner() -> type:
    """Torch-Pruning has no pruner for Hugging Face's Conv1D (y = x @ W + b, W stored (in, out)): this one removes
    output channels as columns of W (and entries of b) and input channels as rows of W. Made on first use, so
    importing prunelab does not import Torch-Pruning (and whatever it imports)."""
    from torch_pruning.pruner.function import BasePruningFunc

    class HFConv1DPruner(BasePruningFunc):
        TARGET_MODULES = None

        def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
            keep = sorted(set(range(layer.weight.shape[1])) - {int(i) for i in idxs})
            layer.weight = nn.Parameter(layer.weight.detach()[:, keep].clone())
            layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
            keep = sorted(set(range(layer.weight.shape[0])) - {int(i) for i in idxs})
            layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.weight.shape[1]

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.weight.shape[0]

    return HFConv1DPruner


def _exact_through(module) -> bool:
    """Whether a removed (all-zero) channel passing through ``module`` leaves the outputs as the shrunk model
    computes them: layers, BatchNorm (its entries are held at zero), PReLU, and Torch-Pruning's graph
    operations (adds, concatenations, reshapes: their class names start with an underscore). Normalizations
    over the channels (LayerNorm, GroupNorm) and free parameters (position embeddings) are not."""
    return isinstance(module, (*_LAYERS, *_NORMS, nn.PReLU)) or type(module).__name__.startswith("_")


def _splits_heads(module) -> bool:
    """A product of two activations (attention's q k^T and its weighted sum of v) among Torch-Pruning's graph
    operations: the channels there are split into heads of a fixed size, so removing some of them moves the
    rest into other heads. Torch-Pruning keeps the autograd node's name of each operation in ``_grad_fn``."""
    name = str(getattr(module, "_grad_fn", ""))
    return type(module).__name__.startswith("_") and any(k in name for k in ("Attention", "Bmm", "Matmul"))


def _grouped(module) -> bool:
    """A grouped, not depthwise, convolution: its output channels can only go the same number per conv group,
    its input channels only at the same positions in every conv group (see ``ChannelGroup.grouped``)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and not module.groups == module.in_channels == module.out_channels)


def _drop(out: dict[str, Tensor], params: dict[str, nn.Parameter], name: str, idx: Tensor) -> None:
    p = params.get(name)
    if p is None:
        return
    keep = out.get(name)
    if keep is None:
        keep = out[name] = torch.ones(p.shape, dtype=torch.bool, device=p.device)
    keep[idx.to(p.device)] = False
