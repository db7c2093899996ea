"""Targets: which weight tensors may be pruned, and how each is laid out.

A target is chosen by what its module *is* (``isinstance``, through the class hierarchy, so subclasses such as
attention's ``NonDynamicallyQuantizableLinear`` count), not by an exact class name. By default every weight
matrix of:

- ``Conv1d/2d/3d`` and ``Linear`` (and subclasses): ``weight``;
- ``MultiheadAttention``: ``in_proj_weight`` (or ``q/k/v_proj_weight``); its ``out_proj`` is a Linear;
- ``RNN/LSTM/GRU`` (``RNNBase``): every ``weight_ih_l*``, ``weight_hh_l*`` (and ``weight_hr_l*``);
- Hugging Face ``Conv1D`` (GPT-2's layers; matched by name, transformers is never imported): ``weight``,
  stored transposed as (in, out);
- a mixture of experts' fused expert tensors (transformers 5: a module whose class name ends in ``Experts``,
  e.g. ``MixtralExperts``, holding ``gate_up_proj`` (experts, out, in) and ``down_proj``; GPT-OSS and Llama-4
  store (experts, in, out)): each 3-D weight viewed as (experts x out, in), so a row is one expert's output row.
  Wanda and SparseGPT calibrate them per expert (norms and Gram matrices of the tokens routed to each) where
  the layout is the standard one; other calibrated methods, other layouts and channel methods leave them out
  with the reason (channel methods remove experts whole with ``units: [experts]``).

``Embedding`` tables, and any weight tied to one (a language model's output layer sharing the token
embedding), are targets only with ``embeddings=True``. ``ConvTranspose`` weights are targets when their class
is named in ``module_types``. A weight shared by several modules is one target, named as
``model.named_parameters()`` names it (its first alias).

Every target has a :class:`Layout` that maps its storage to the engine's (out, in, *kernel) convention, so a
granularity means the same on a transposed ``Conv1D`` as on a ``Linear``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from .errors import ConfigError

DEFAULT_TYPES = ["Conv1d", "Conv2d", "Conv3d", "Linear", "MultiheadAttention", "RNNBase", "Conv1D", "Experts"]
_GATES = {"LSTM": 4, "GRU": 3}


@dataclass(frozen=True)
class Layout:
    """How a stored weight maps to (out, in, *kernel): ``transposed`` when stored (in, out, ...) (HF ``Conv1D``,
    ``ConvTranspose``); ``blocks`` stacked row blocks (LSTM gates 4, GRU 3, attention q/k/v 3); ``kind`` says
    what the weight is, for reports."""

    kind: str = "linear"
    transposed: bool = False
    blocks: int = 1
    # fused expert tensors (experts, out, in), or (experts, in, out) with ``transposed`` (GPT-OSS, Llama-4):
    # viewed as (experts x out, in), so a row is one expert's output row either way
    experts: int = 0

    def canonical(self, t: Tensor) -> Tensor:
        """``t`` (the weight, its scores or its mask) as (out, in, *kernel): a view, except for transposed expert
        tensors (a copy; callers write back through :meth:`stored`)."""
        if self.experts:
            return (t.transpose(1, 2) if self.transposed else t).reshape(-1, t.shape[1 if self.transposed else -1])
        return t.transpose(0, 1) if self.transposed else t

    def stored(self, t: Tensor) -> Tensor:
        """The inverse of :meth:`canonical`: a canonical tensor back in the weight's storage layout."""
        if self.experts:
            e = t.reshape(self.experts, -1, t.shape[-1])
            return e.transpose(1, 2) if self.transposed else e
        return t.transpose(0, 1) if self.transposed else t

    def canonical_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.experts:
            return (shape[0] * shape[2], shape[1]) if self.transposed else (shape[0] * shape[1], shape[2])
        return (shape[1], shape[0], *shape[2:]) if self.transposed else tuple(shape)


@dataclass(frozen=True)
class Target:
    """One prunable weight: its name (the first alias), the parameter, its layout, and every alias."""

    name: str
    param: nn.Parameter
    layout: Layout
    aliases: tuple[str, ...] = ()


def _is(module: nn.Module, names: list[str]) -> bool:
    """True when the module's class or one of its bases is named in ``names`` (subclasses count); "Experts"
    names every class whose name ends in it (each MoE family has its own)."""
    return any(cls.__name__ in names or ("Experts" in names and cls.__name__.endswith("Experts"))
               for cls in type(module).__mro__)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's linear layers), recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def _weights(module: nn.Module) -> Iterator[tuple[str, Layout]]:
    """The weight matrices a module owns directly: (attribute name, layout)."""
    if isinstance(module, nn.MultiheadAttention):
        for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            yield attr, Layout("attention", blocks=3 if attr == "in_proj_weight" else 1)
    elif isinstance(module, nn.RNNBase):
        gates = next((g for name, g in _GATES.items() if _is(module, [name])), 1)
        for attr, _ in module.named_parameters(recurse=False):
            if attr.startswith("weight_"):
                yield attr, Layout("recurrent", blocks=1 if attr.startswith("weight_hr") else gates)
    elif isinstance(module, nn.modules.conv._ConvTransposeNd):
        yield "weight", Layout("conv_transpose", transposed=True)
    elif isinstance(module, nn.modules.conv._ConvNd):
        yield "weight", Layout("conv")
    elif isinstance(module, nn.Embedding):
        yield "weight", Layout("embedding")
    elif type(module).__name__.endswith("Experts"):
        transposed = _experts_transposed(module)
        for attr, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                yield attr, Layout("experts", transposed=transposed, experts=p.shape[0])
    elif is_hf_conv1d(module):
        yield "weight", Layout("linear", transposed=True)  # Hugging Face Conv1D: y = x @ W + b, W is (in, out)
    else:
        yield "weight", Layout("linear")


def experts_calibrate(module: nn.Module) -> bool:
    """Whether a fused experts module has the standard layout whose per-expert inputs calibration can rebuild
    (:func:`prunelab.calibration.observers.expert_rows`): gate_up_proj (E, 2I, H) with gate then up, down_proj
    (E, H, I), an ``act_fn``, no biases, not transposed (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3, ...)."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gu, Tensor) and isinstance(down, Tensor) and gu.dim() == 3 and down.dim() == 3
            and callable(getattr(module, "act_fn", None)) and not _experts_transposed(module)
            and getattr(module, "is_concatenated", True) is True and not getattr(module, "has_bias", False)
            and gu.shape[1] == 2 * down.shape[2] and gu.shape[2] == down.shape[1]
            and not any(p.dim() == 2 for p in module.parameters(recurse=False)))


def _experts_transposed(module: nn.Module) -> bool:
    """Whether a fused experts module stores its tensors (experts, in, out): transformers' own flag where its
    ``use_experts_implementation`` set one (GPT-OSS), else read from the shapes: gate_up_proj (or up_proj) takes
    the hidden size in, down_proj gives it out (Llama-4's text experts: (E, H, 2I) and (E, I, H))."""
    flag = getattr(module, "is_transposed", None)
    if isinstance(flag, bool):
        return flag
    hidden = next((v for v in (getattr(module, "hidden_size", None), getattr(module, "hidden_dim", None))
                   if isinstance(v, int)), None)
    up = getattr(module, "gate_up_proj", getattr(module, "up_proj", None))
    down = getattr(module, "down_proj", None)
    if hidden is None:
        return False
    if isinstance(up, Tensor) and up.dim() == 3 and (up.shape[1] == hidden) != (up.shape[2] == hidden):
        return bool(up.shape[1] == hidden)
    if isinstance(down, Tensor) and down.dim() == 3 and (down.shape[1] == hidden) != (down.shape[2] == hidden):
        return bool(down.shape[2] == hidden)
    return False


@dataclass
class Targets:
    """Selects the prunable weight tensors of a model.

    include / exclude: glob patterns over parameter names; a weight must match some ``include`` pattern and no
    ``exclude`` pattern. module_types: class names (a module matches when its class or a base class has one of
    these names) whose weights may be pruned. embeddings: also prune ``Embedding`` tables and weights tied to
    them. keep_first_dense / keep_last_dense: drop the first / last of the matched weights (registration
    order; for a language model "last" is its output layer). incompatible: what to do with a weight the granularity cannot apply to (N:M on 3 input channels):
    ``"skip"`` it, named in the summary, or ``"error"``. output_layer: whether a language model's output layer
    (``model.get_output_embeddings()``, an untied ``lm_head``) is a target; None: the method's default (the
    calibrated methods leave it dense, as Wanda and SparseGPT do; the others prune it).
    """

    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    module_types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    embeddings: bool = False
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    incompatible: str = "skip"
    output_layer: bool | None = None

    def __post_init__(self) -> None:
        if self.incompatible not in ("skip", "error"):
            raise ConfigError(f"targets incompatible must be 'skip' or 'error', got {self.incompatible!r}")
        if self.output_layer is not None and not isinstance(self.output_layer, bool):
            raise ConfigError(f"targets output_layer must be true, false or null, got {self.output_layer!r}")

    def find(self, model: nn.Module, output_layer: bool = True) -> list[Target]:
        """The prunable weights in registration order; ConfigError when nothing matches, so a typo in a pattern
        cannot silently prune nothing. ``output_layer``: the default of :attr:`output_layer` when it is None."""
        keep_out = self.output_layer if self.output_layer is not None else output_layer
        out_layer = None if keep_out else output_weight(model)
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        types = self.module_types + (["Embedding"] if self.embeddings else [])
        found: dict[int, Target] = {}
        for module in model.modules():
            if not _is(module, types):
                continue
            for attr, layout in _weights(module):
                w = getattr(module, attr, None)
                if not isinstance(w, nn.Parameter) or w.dim() < 2 or id(w) in found:
                    continue
                if id(w) in embedded and not self.embeddings:
                    continue  # a weight tied to an embedding table is one (e.g. GPT-2's lm_head)
                if w is out_layer:
                    continue
                names = aliases[id(w)]
                if not any(fnmatch.fnmatchcase(n, p) for n in names for p in self.include):
                    continue
                if any(fnmatch.fnmatchcase(n, p) for n in names for p in self.exclude):
                    continue
                found[id(w)] = Target(names[0], w, layout, tuple(names))
        targets = list(found.values())
        head = output_weight(model)
        if self.keep_last_dense and head is not None:
            # a language model's last layer is its output layer, wherever it is registered (GPT-2's is tied to
            # the embedding, so the last registered Linear would be the last block's MLP, which then could not
            # lose the channels every other block loses)
            targets = [t for t in targets if t.param is not head]
        elif self.keep_last_dense and len(targets) > 1:
            targets.pop()
        if self.keep_first_dense and targets:
            targets.pop(0)
        if not targets:
            raise ConfigError(
                f"no prunable weights matched (include={self.include}, exclude={self.exclude}, "
                f"module_types={self.module_types}, embeddings={self.embeddings})")
        return targets

    def for_method(self, model: nn.Module, gran, method) -> tuple[dict[str, nn.Parameter], dict[str, Layout],
                                                                   dict[str, str]]:
        """({name: parameter}, {name: layout}, {name: why it is left out}) of the targets ``method`` prunes with
        granularity ``gran``: weights without elements and (``incompatible: skip``) those the granularity cannot
        apply to are left out with the reason, as is an LM's output layer the method leaves dense by default
        (its ``output_layer``) and fused expert tensors where it calibrates or removes channels. ConfigError
        when nothing is left."""
        output_layer = method.output_layer
        # experts are targets of a method that removes them whole (units: [experts]) and needs no calibration
        removes_experts = "experts" in (getattr(method, "unit_kinds", None) or ())
        cal = method.requirements().calibration
        # calibrated per expert from the tokens routed to it (norms, Gram matrices) where the layout is the
        # standard one (:func:`experts_calibrate`); other statistics, or other layouts, leave them dense
        per_expert = cal is not None and all(p <= {"norms", "gram"} for p in cal.passes)
        experts_out = not removes_experts and (method.channels or (cal is not None and not per_expert))
        method = method.name
        params, layouts, skipped = {}, {}, {}
        found = self.find(model, output_layer=output_layer)
        out = output_weight(model)
        tied = out is not None and any(m.weight is out for m in model.modules() if isinstance(m, nn.Embedding))
        if out is not None and not tied and self.output_layer is None and not output_layer:
            name = next(n for n, p in model.named_parameters() if p is out)
            skipped[name] = (f"{name} is the output layer of a language model, left dense by {method} as its "
                             "authors do (targets.output_layer: true prunes it)")
        for t in found:
            if t.layout.experts and not experts_out and cal is not None and not removes_experts and \
                    not experts_calibrate(model.get_submodule(t.name.rpartition(".")[0])):
                skipped[t.name] = (f"{t.name} holds fused expert weights of a layout {method} cannot give per-expert "
                                   "statistics (transposed, interleaved or biased experts), so it leaves them dense")
                continue
            if t.layout.experts and experts_out:
                skipped[t.name] = (f"{t.name} holds fused expert weights, which {method} leaves dense: its "
                                   "statistics are gathered per expert only as norms and Gram matrices (Wanda, "
                                   "SparseGPT), and channel methods remove experts whole (units: [experts])")
                continue
            if t.param.numel() == 0:  # nothing to prune (nn.Linear(0, 5)); no granularity can say anything of it
                skipped[t.name] = f"{t.name} has no elements (shape {tuple(t.param.shape)})"
                continue
            try:
                gran.check(t.name, t.layout.canonical_shape(tuple(t.param.shape)))
            except ConfigError as exc:
                if self.incompatible == "error":
                    raise
                skipped[t.name] = str(exc)
                continue
            params[t.name], layouts[t.name] = t.param, t.layout
        if not params:
            raise ConfigError(f"the granularity fits none of the {len(found)} target weights; for example: "
                              f"{next(iter(skipped.values()))}")
        return params, layouts, skipped

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """``{name: parameter}`` of :meth:`find`."""
        return {t.name: t.param for t in self.find(model)}


def output_weight(model: nn.Module) -> nn.Parameter | None:
    """A language model's output-layer weight (``get_output_embeddings()``, as Hugging Face models have it)."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        layer = get() if callable(get) else None
    except (AttributeError, NotImplementedError, TypeError):
        return None
    w = getattr(layer, "weight", None)
    return w if isinstance(w, nn.Parameter) else None


def weight_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter with at least two dimensions larger than one, once per tensor (first alias): what a user
    counts as the model's weights when asking how sparse it is. Vectors in disguise (a layer scale of shape
    (C, 1, 1), a class token (1, 1, D)) are not matrices; position embeddings (1, S, D) are."""
    return {n: p for n, p in model.named_parameters() if sum(d > 1 for d in p.shape) >= 2}


def accounting(model: nn.Module, masks) -> dict:
    """What the masks do to every weight matrix of ``model``: ``all_weights`` (params, nonzero and sparsity over
    all of them, untargeted ones counted as they are) and ``untargeted`` (name, shape, numel of each matrix the
    masks do not cover), so a sparsity over prunable weights never hides weights nobody looked at."""
    import torch

    untargeted = {n: p for n, p in weight_matrices(model).items() if n not in masks}
    total = masks.numel() + sum(p.numel() for p in untargeted.values())
    # an untargeted weight on disk (meta: a model calibrated from disk) is not read to be counted: all nonzero
    nonzero = masks.nonzero() + sum(p.numel() if p.is_meta else int(torch.count_nonzero(p))
                                    for p in untargeted.values())
    out = {"all_weights": {"params": total, "nonzero": nonzero, "sparsity": 1 - nonzero / max(total, 1)},
           "untargeted": [{"name": n, "shape": list(p.shape), "numel": p.numel()} for n, p in untargeted.items()]}
    unread = sum(p.numel() for p in untargeted.values() if p.is_meta)
    if unread:
        out["all_weights"]["unread_counted_nonzero"] = unread
    return out


def build_targets(spec: "Targets | dict | None") -> Targets:
    """Targets from None (defaults), a mapping of its fields, or an instance."""
    if spec is None:
        return Targets()
    if isinstance(spec, Targets):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"targets must be a mapping, got {type(spec).__name__}")
    valid = set(Targets.__dataclass_fields__)
    unknown = sorted(set(spec) - valid)
    if unknown:
        raise ConfigError(f"unknown targets option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    spec = {k: ([v] if k in ("include", "exclude", "module_types") and isinstance(v, str) else v)
            for k, v in spec.items()}
    for k in ("include", "exclude", "module_types"):
        v = spec.get(k)
        if v is not None and not (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)):
            raise ConfigError(f"targets {k} must be a name pattern or a list of them, got {v!r}")
    return Targets(**spec)


def check_values(model: nn.Module, request) -> None:
    """ConfigError when a parameter is on the meta device (a shape, no values), unless the method calibrates block
    by block (``request.sequential``): then the weights may be on disk (:mod:`prunelab.calibration.disk`)."""
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None and not (request is not None and request.sequential):
        raise ConfigError(f"parameter {meta} is on the meta device (it has a shape but no values): load the "
                          "weights first (model.to_empty(device=...) and load_state_dict), or open the model "
                          "with prunelab.calibration.disk.open_on_disk and prune it with a sequential method")


def check_current(model: nn.Module, params: dict[str, nn.Parameter]) -> None:
    """ConfigError when a target is no longer the model's (its layer was replaced after the Pruner was built)."""
    for n, p in params.items():
        try:
            current = model.get_parameter(n)
        except AttributeError:
            current = None
        if current is not p:
            raise ConfigError(f"{n} is not the parameter this Pruner was built on (the layer was replaced or "
                              "removed after): build the Pruner again on the model as it is now")


def not_finite_error(name: str) -> ConfigError:
    """The sentence for a target holding NaN or infinite values (a NaN has no rank: global allocation would
    prune every layer whole)."""
    return ConfigError(f"weight {name} holds NaN or infinite values: training diverged or the weights are "
                       "damaged; prune finite weights")


def check_finite(params: dict[str, Tensor]) -> None:
    """:func:`not_finite_error` for the first target holding NaN or infinite values. A streamed selection pass
    checks its slices itself instead (this is a second read of every weight, half a global pass's time)."""
    bad = first_not_finite({n: [p] for n, p in params.items() if not p.is_meta})  # on disk: checked as read
    if bad is not None:
        raise not_finite_error(bad)


def first_not_finite(named: dict[str, list[Tensor]]) -> str | None:
    """The first name whose tensors hold a NaN or infinity, else None: one read of the device for all of them
    (a read per tensor would stall a GPU once per layer), the name looked for only when one is."""
    flags = [torch.isfinite(t).all() for ts in named.values() for t in ts]
    if not flags:
        return None
    devices = {f.device for f in flags}
    ok = all(bool(torch.stack([f for f in flags if f.device == d]).all()) for d in devices)
    if ok:
        return None
    return next(n for n, ts in named.items() if not all(bool(torch.isfinite(t).all()) for t in ts))
