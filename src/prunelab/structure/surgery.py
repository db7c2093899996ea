"""Shrink: a model whose masks remove whole channels becomes a physically smaller dense model.

``shrink(model, masks, example_inputs)`` removes every channel that :class:`~prunelab.structure.channels.ChannelGraph`
reports removed (every producer of its coupled group pruned), through Torch-Pruning's dependency graph, so
residual adds, concatenations, BatchNorm and flatten-into-linear stay consistent. It then checks that the
shrunk model computes what the masked model computes (max abs difference <= ``atol`` on random inputs, in
eval mode and float64) and raises :class:`ShrinkError` when it does not, so a wrong model is never saved.

The shrunk model is stored as safetensors weights plus a JSON *width manifest*: the original model's name
and arguments and, for every module whose size changed, its new sizes. ``rebuild`` builds the original
architecture, swaps those modules for resized ones of the same class and loads the weights: nothing is
unpickled. Resizable module classes: Conv1d/2d/3d, Linear, BatchNorm1d/2d/3d, Hugging Face Conv1D,
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (their hidden size, :mod:`prunelab.structure.recurrent`), and
``nn.MultiheadAttention``, whose pruned heads make it a :class:`~prunelab.structure.heads.HeadPrunedAttention`.
"""
from __future__ import annotations

from torch import nn

from .heads import HeadPrunedAttention, attention_heads
from .channels import ChannelGraph
from ..masks import Masks
from ..errors import ShrinkError
from ..inputs import Inputs, copy_model
from .recognize import family_of
from .transformer import TransformerUnits
from .units import supported_kinds
from .equivalence import check_same_outputs, masked_reference, zero_masked
from ..targets import is_hf_conv1d

def shrink(model: nn.Module, masks, example_inputs: Inputs, atol: float = 1e-5,
           check_inputs: Inputs | None = None, check: bool = True,
           graph: ChannelGraph | None = None) -> tuple[nn.Module, dict[str, dict]]:
    """A smaller copy of ``model`` without the channels the masks remove, and its width changes.

    ``example_inputs`` are the model's inputs as it takes them: a tensor, a tuple of positional inputs or a
    dict of keyword inputs (token ids included). ``model`` itself is not changed. Returns ``(shrunk, widths)``
    where widths maps module names to their new sizes (see the module docstring). The outputs are compared on
    ``example_inputs`` and on random inputs like them (floats N(0, 1), integers over the example's range), in
    float64; ShrinkError when they differ by more than ``atol`` (for instance when a removed channel still
    has a BatchNorm shift that the masked model kept). ``check=False`` skips that comparison (and the masked
    copy it needs): for a caller that has verified the same masks on the same architecture before, since the
    float64 forward passes are most of shrink's time on a large convolutional model.

    ``graph``: the channel graph already traced on ``model`` (a channel method's ``pruner.channels``). Then
    ``model`` itself is shrunk in place and returned, with no copy and no second trace, as Torch-Pruning
    prunes; the pruner and its masks no longer fit the model afterwards.
    """
    if isinstance(graph, TransformerUnits) or (graph is None and family_of(model) is not None):
        return _shrink_transformer(model, masks, example_inputs, atol, graph)
    if graph is not None and graph.model is not model:
        raise ShrinkError("the channel graph given to shrink was traced on another model (pass pruner.channels "
                          "of the pruner that pruned this model)")
    (masks if isinstance(masks, Masks) else Masks(masks)).check_fits(model)  # another model's masks: one sentence
    masked = masked_reference(model, masks) if check else None  # the trained model's companions untouched
    if graph is None:
        small = copy_model(model).eval()
        graph = ChannelGraph(small, example_inputs)
    else:
        small = model.eval()
        if graph.dg is None:  # groups reused from an earlier trace: the pruning itself needs Torch-Pruning's graph
            graph = ChannelGraph(small, example_inputs, graph.ignored)
    removed = graph.removed(masks)
    zero_masked(small, masks, graph.companion_masks(masks))
    before = widths_of(small)
    sizes = {g.root: g.size for g in graph.groups}
    for root, chans in removed.items():
        module = graph.modules[root]
        size = sizes[root]
        if len(chans) >= size:
            raise ShrinkError(f"the masks remove every output channel of {root}; the model would be cut in two")
        pruner = graph.dg.get_pruner_of_module(module)
        graph.dg.get_pruning_group(module, pruner.prune_out_channels, chans.tolist()).prune()
    _shrink_recurrent(small, masks, graph)
    for a in attention_heads(small, masks):  # heads whose out_proj columns are all pruned go
        kept = a.kept(masks)
        if not kept.all():
            if not kept.any():
                raise ShrinkError(f"the masks remove every head of {a.module}; the model would be cut in two")
            parent, _, child = a.module.rpartition(".")
            attn = small.get_submodule(a.module)
            setattr(small.get_submodule(parent) if parent else small, child,
                    HeadPrunedAttention.from_attention(attn, kept.nonzero().flatten()))
    if masked is not None:
        check_same_outputs(masked, small, example_inputs, atol, _differs(atol), _cannot_run, check_inputs)
    after = widths_of(small)
    widths = {n: s for n, s in after.items() if before.get(n) != s}
    return small, widths


def _shrink_recurrent(small: nn.Module, masks, graph: ChannelGraph) -> None:
    """Recurrent modules with removed hidden units: Torch-Pruning cuts the readers of the last layer's removed
    output channels (through the stand-in traced in the module's place), then the module is rebuilt smaller."""
    from .recurrent import shrink_recurrent

    for r in graph.recurrent_layers(masks):
        kept = r.alive(masks)
        if kept.all():
            continue
        smaller = shrink_recurrent(small, r, kept)  # checks first: equal counts, not every unit
        last = range((r.layers - 1) * r.directions, r.blocks)
        gone = [int(j) + d * r.hidden for d, b in enumerate(last) for j in (~kept[b]).nonzero().flatten()]
        s = graph.stand_ins[r.module]
        graph.dg.get_pruning_group(s, graph.dg.get_pruner_of_module(s).prune_out_channels, gone).prune()
        parent, _, child = r.module.rpartition(".")
        setattr(small.get_submodule(parent) if parent else small, child, smaller)


def _shrink_transformer(model: nn.Module, masks, example_inputs, atol: float, units) -> tuple[nn.Module, dict]:
    """A Hugging Face transformer of a known layout: the same class with a smaller config
    (:mod:`prunelab.structure.hf_surgery`); ``widths`` are the config fields that changed."""
    from .hf_surgery import shrink_hf  # transformers' own classes: imported only where a transformer is cut

    (masks if isinstance(masks, Masks) else Masks(masks)).check_fits(model)
    if units is None:
        fam = family_of(model)
        units = TransformerUnits(model, fam, masks, supported_kinds(model, fam))
    elif units.model is not model:
        raise ShrinkError("the units given to shrink were read from another model (pass pruner.channels of the "
                          "pruner that pruned this model)")
    return shrink_hf(model, masks, units, example_inputs, atol)


def _cannot_run(error: str) -> str:
    return (f"the shrunk model cannot run ({error}): the channel graph missed a coupling; exclude that layer from "
            "the targets")


def _differs(atol: float):
    return lambda diff: (
        f"the shrunk model's outputs differ from the masked model's by {diff:.3g} (> {atol:g}): removed "
        "channels still carry a bias or normalization shift, or feed a normalization over channels "
        "(LayerNorm, GroupNorm) whose statistics change when a channel goes; prune with a channel method "
        "(l1_filter, slimming, or method option channels: true), which holds removable channels' companions "
        "at zero and leaves channels under such norms in place")


def widths_of(model: nn.Module) -> dict[str, dict]:
    """Every resizable module's sizes, by name (what a width manifest records when they change)."""
    out = {}
    # a HeadPrunedAttention is rebuilt whole from its kept heads: its out_proj is not a width of its own
    inside = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, HeadPrunedAttention)}
    for name, m in model.named_modules():
        if name in inside:
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                         "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"type": type(m).__name__, "num_features": m.num_features}
        elif is_hf_conv1d(m):
            out[name] = {"type": "Conv1D", "in_features": m.weight.shape[0], "out_features": m.weight.shape[1]}
        elif isinstance(m, HeadPrunedAttention):
            out[name] = {"type": "HeadPrunedAttention", "heads_kept": m.heads_kept}
        elif type(m) in (nn.LSTM, nn.GRU, nn.RNN):
            out[name] = {"type": type(m).__name__, "input_size": m.input_size, "hidden_size": m.hidden_size}
    return out
