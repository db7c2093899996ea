"""A Hugging Face transformer whose masks remove units of structure, rebuilt as the same class with a smaller
config, checked equal to the masked model, and saved as a folder plain ``transformers`` loads.

:func:`shrink_hf` builds ``type(model)(config)`` from the model's config with the new widths
(``intermediate_size``, ``num_attention_heads`` with ``num_key_value_heads`` and ``head_dim`` kept,
``hidden_size`` with ``rms_norm_eps`` scaled by N / n, ``num_hidden_layers`` with the per-layer lists such as
``layer_types`` cut to the kept blocks) and fills it with the kept entries of every tensor: the class's own
code then computes the smaller model, blocks renumbered, so its key-value cache and ``generate`` work as for any
model of that config. Before anything is returned the float64 logits of the masked model and the shrunk one are
compared on the example inputs and on random tokens: ShrinkError beyond ``atol``.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShrinkError, first_line
from ..inputs import Inputs
from .equivalence import check_same_outputs, masked_reference
from .experts import Routing
from .transformer import TransformerUnits
from .units import removed_units


def _kept(units: TransformerUnits, masks: Mapping[str, Tensor]) -> tuple[dict, dict, list[int]]:
    """({(param, dim): kept indices}, {kind: kept width}, kept blocks) from the removed units; ConfigError when
    blocks would keep different widths (transformers builds one width for every block of these configs)."""
    named = {**dict(units.model.named_buffers()), **dict(units.model.named_parameters(remove_duplicate=False))}
    drop: dict[tuple[str, int], set[int]] = {}
    widths: dict[str, set[int]] = {}
    blocks = list(range(len(units.model.get_submodule(units.family.layers))))
    for g in units.groups:  # blocks that go first: the units inside them go with them
        if g.kind == "depth":
            gone = removed_units(g, masks)
            widths["depth"] = {g.size - int(gone.sum())}
            blocks = [i for i in blocks if not gone[i]]
    taking = {g.name for g in units.groups}
    for g in units.all_groups:  # a group whose weights are not all targets keeps its full width
        if g.kind == "depth" or (g.block is not None and g.block not in blocks):
            continue
        gone = removed_units(g, masks) if g.name in taking else torch.zeros(g.size, dtype=torch.bool)
        widths.setdefault(g.kind, set()).add(g.size - int(gone.sum()))
        for p in g.parts:
            rows = p.index[gone[p.units]].reshape(-1).tolist()
            drop.setdefault((p.param, p.dim), set()).update(rows)
    uneven = [k for k, w in widths.items() if len(w) > 1]
    if uneven:
        raise ConfigError(f"the masks leave blocks with different {uneven[0]} widths ({sorted(widths[uneven[0]])}), "
                          f"which a {units.family.name} config cannot describe: prune with allocation uniform")
    if not blocks:
        raise ConfigError("the masks remove every block; the model would be cut in two")
    bad = [k for k, w in widths.items() if k != "depth" and 0 in w]
    if bad:
        raise ConfigError(f"the masks remove every {bad[0]} unit of a block; the model would be cut in two")
    kept = {key: torch.tensor(sorted(set(range(named[key[0]].shape[key[1]])) - gone))
            for key, gone in drop.items() if gone}
    return kept, {k: next(iter(w)) for k, w in widths.items()}, blocks


def small_config(model: nn.Module, units: TransformerUnits, widths: dict[str, int], blocks: list[int]):
    """A copy of the model's config with the kept widths and blocks."""
    fam, config = units.family, copy.deepcopy(model.config)
    if "mlp" in widths:
        setattr(config, fam.field("mlp"), widths["mlp"])
    if "heads" in widths:
        from .families import attention_shape

        heads, kv, d = attention_shape(model, fam)
        setattr(config, fam.field("heads"), widths["heads"] * heads // kv)
        setattr(config, fam.field("kv"), widths["heads"])
        config.head_dim = d  # stated: the default hidden_size / heads would change it
    if "experts" in widths:  # the top-k a token is routed to was checked against it when experts were chosen
        setattr(config, fam.field("experts"), widths["experts"])
    if "hidden" in widths:
        n_old, n = getattr(model.config, fam.field("hidden")), widths["hidden"]
        if fam.head_dim_field and getattr(config, "head_dim", None) is None:
            config.head_dim = n_old // getattr(config, fam.field("heads"))
        setattr(config, fam.field("hidden"), n)
        config.rms_norm_eps = model.config.rms_norm_eps * n_old / n
    n_layers = getattr(model.config, fam.field("depth"))
    if len(blocks) != n_layers:
        setattr(config, fam.field("depth"), len(blocks))
        for key, value in vars(config).items():  # per-layer lists (layer_types ...) follow the kept blocks
            if isinstance(value, list) and len(value) == n_layers:
                setattr(config, key, [value[i] for i in blocks])
    return config


def _old_name(name: str, layers: str, blocks: list[int]) -> str:
    """The masked model's name of the shrunk model's parameter ``name`` (blocks renumbered)."""
    pre = layers + "."
    if not name.startswith(pre):
        return name
    i, _, rest = name[len(pre):].partition(".")
    return f"{pre}{blocks[int(i)]}.{rest}"


def shrink_hf(model: nn.Module, masks: Mapping[str, Tensor], units: TransformerUnits, example_inputs: Inputs,
              atol: float = 1e-5) -> tuple[nn.Module, dict]:
    """(the smaller model of the same class, the config fields that changed); see the module docstring.
    ``model`` is not changed. The reference is ``model`` with its pruned weights at zero and everything else as
    it is: a removed unit whose bias or embedding column was not held at zero (a Pruner holds them) changes the
    outputs, and the check says so."""
    kept, widths, blocks = _kept(units, masks)
    masked = masked_reference(model, masks)
    Routing().update(masked, units.removed_experts(masks))  # removed experts never chosen (:mod:`.experts`)
    config = small_config(model, units, widths, blocks)
    dtype = next(model.parameters()).dtype
    try:
        with _no_init():
            small = type(model)(config).to(dtype)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ShrinkError(f"transformers cannot build a {type(model).__name__} of the smaller config: "
                          f"{first_line(exc, 160)}") from None
    old = masked.state_dict()
    scale = _norm_scale(units, widths, model)
    # a tied weight's other names (lm_head.weight for the embedding) lose what its first name loses
    first = {id(p): n for n, p in model.named_parameters()}
    alias = {n: first[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    state = {}
    for name, t in small.state_dict().items():
        was = _old_name(name, units.family.layers, blocks)
        src, key = old[was], alias.get(was, was)
        for dim in range(src.dim()):
            if (key, dim) in kept:
                src = src.index_select(dim, kept[(key, dim)])
        if key in scale:
            src = src * scale[key]
        if tuple(src.shape) != tuple(t.shape):
            raise ShrinkError(f"{name} would be {tuple(src.shape)} in the smaller {type(model).__name__}, which "
                              f"expects {tuple(t.shape)}")
        state[name] = src.contiguous()
    small.load_state_dict(state, strict=True)
    if getattr(model.config, "tie_word_embeddings", False):
        small.tie_weights()  # as from_pretrained leaves it
    small.config.use_cache = model.config.use_cache
    if getattr(model, "generation_config", None) is not None:  # built from a config whose use_cache may be off:
        small.generation_config = copy.deepcopy(model.generation_config)  # generate would then run without a cache
    small.eval()
    check_same_outputs(masked, small, example_inputs, atol, lambda diff: (
        f"the smaller {type(small).__name__}'s logits differ from the masked model's by {diff:.3g} (> {atol:g}) "
        "in float64: " + (f"this {units.family.name} block does not compute what its modules suggest "
                          f"(its layout was read from its modules), so {', '.join(sorted(widths))} cannot be cut "
                          "exactly" if units.family.recognized else "the removed units were not all at zero")))
    changed = {k: v for k, v in config.to_diff_dict().items()
               if getattr(model.config, k, None) != v and k != "transformers_version"}
    return small, changed


def _no_init():
    """transformers' context that skips weight initialization (every weight is overwritten next; a random init
    took 3.4 s for a 1024-wide 8-block LLaMA, 0.007 s without); a plain context where it is missing."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def _norm_scale(units: TransformerUnits, widths: dict[str, int], model: nn.Module) -> dict[str, float]:
    """The RMSNorm gains over the hidden size, scaled by sqrt(N / n) (see :mod:`.units`)."""
    if "hidden" not in widths:
        return {}
    fam = units.family
    s = math.sqrt(getattr(model.config, fam.field("hidden")) / widths["hidden"])
    names = ([f"{fam.final_norm}.weight"] if fam.final_norm else []) + [f"{fam.layers}.{i}.{n}.weight"
                                             for i in range(len(model.get_submodule(fam.layers))) for n in fam.norms]
    return {n: s for n in names}
