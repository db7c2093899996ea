"""Model inputs and outputs as users have them: one tensor, a tuple of positional inputs, or a dict of keyword
inputs (token ids, attention masks, images); outputs as a tensor, a tuple, a dict or a Hugging Face
``ModelOutput``. Tracing, the shrink check and ONNX export go through these helpers instead of assuming one
float tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn

Inputs = Any  # Tensor | tuple | list | Mapping[str, Tensor]


def call(model: nn.Module, inputs: Inputs) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)``, by the kind of ``inputs``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def map_tensors(inputs: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """The same structure with ``fn`` applied to every tensor (other values kept)."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(v, fn) for v in inputs)
    return inputs


def tensors(outputs: Any) -> list[Tensor]:
    """Every tensor in a model's output, in a fixed order (dict keys in insertion order)."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [t for v in outputs.values() for t in tensors(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in tensors(v)]
    return []


def to_double(inputs: Inputs) -> Inputs:
    """Floating tensors to float64; integer inputs (token ids, masks) unchanged."""
    return map_tensors(inputs, lambda t: t.double() if t.is_floating_point() else t)


def random_like(inputs: Inputs, generator: torch.Generator, batch: int | None = None) -> Inputs:
    """Random inputs of the same structure, dtypes and shapes (the leading dimension ``batch`` when given):
    floats from N(0, 1), integers uniform over the range the example uses (token ids stay valid ids), bools
    copied. Every tensor's batch must be the same for ``batch`` to apply."""
    def draw(t: Tensor) -> Tensor:
        shape = (batch, *t.shape[1:]) if batch is not None and t.dim() > 0 else tuple(t.shape)
        if t.is_floating_point():
            return torch.randn(shape, generator=generator, dtype=t.dtype).to(t.device)
        if t.dtype == torch.bool:
            return t[:1].expand(shape).clone() if batch is not None and t.dim() > 0 else t.clone()
        lo, hi = int(t.min()), int(t.max())
        return torch.randint(lo, hi + 1, shape, generator=generator, dtype=t.dtype).to(t.device)
    return map_tensors(inputs, draw)


def max_output_diff(a: nn.Module, b: nn.Module, inputs: Inputs) -> float:
    """Max abs difference between two models' outputs on ``inputs`` (both in eval mode, no gradients)."""
    wa, wb = a.training, b.training
    a.eval(), b.eval()
    try:
        with torch.no_grad():
            out_a, out_b = tensors(call(a, inputs)), tensors(call(b, inputs))
    finally:
        a.train(wa), b.train(wb)
    if len(out_a) != len(out_b) or any(x.shape != y.shape for x, y in zip(out_a, out_b)):
        return float("inf")
    return max(((x.double() - y.double()).abs().max().item() for x, y in zip(out_a, out_b)), default=0.0)


def _forward_graph(model: nn.Module, inputs: Inputs, types: tuple[type, ...]):
    """One forward pass with autograd on: (layer names in order, {grad_fn: layer that made it}, the output
    tensors, {layer: the grad_fns of its inputs, one list per call})."""
    made: dict[Any, str] = {}
    fed: dict[str, list[list[Any]]] = {}

    def catch(name):
        def hook(module, args, out):
            fed.setdefault(name, []).append([t.grad_fn for t in tensors(args) if t.grad_fn is not None])
            for t in tensors(out):
                if t.grad_fn is not None:
                    made[t.grad_fn] = name
        return hook
    names = [n for n, m in model.named_modules() if isinstance(m, types)]
    handles = [m.register_forward_hook(catch(n)) for n, m in model.named_modules() if isinstance(m, types)]
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outs = tensors(call(model, inputs))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return names, made, outs, fed


def _nearest(starts: list, made: dict[Any, str]) -> set[str]:
    """The layers first met walking the autograd graph back from ``starts`` (each path stops at a layer)."""
    found, seen, stack = set(), set(), list(starts)
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            found.add(made[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def output_layers(model: nn.Module, inputs: Inputs, types: tuple[type, ...]) -> list[str]:
    """The layers of ``types`` whose outputs reach the model's outputs without passing through another such
    layer (a classifier, a detector's class and box predictors, a segmentation head and its auxiliary one, a
    language model's head), in registration order: found from one forward pass's autograd graph, walked back
    from every output tensor and stopped at the first layer on each path, not by name. [] when the forward
    records no graph (outputs without gradients)."""
    names, made, outs, _ = _forward_graph(model, inputs, types)
    found = _nearest([t.grad_fn for t in outs if t.grad_fn is not None], made)
    return [n for n in names if n in found]


def shared_layers(model: nn.Module, inputs: Inputs, types: tuple[type, ...]) -> tuple[set[str], set[str]]:
    """(the layers of ``types`` called more than once in one forward pass, a detector's RPN head over every
    feature level or a weight-shared block; the layers whose outputs feed any of those calls): the channels of
    all of them are tied across the calls, which a graph traced through one call does not see."""
    names, made, _, fed = _forward_graph(model, inputs, types)
    called = {name for name, calls in fed.items() if len(calls) > 1}
    return called, _nearest([fn for name in called for c in fed[name] for fn in c], made)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model that keeps tensors of its last forward pass as attributes
    (torchvision's RAFT caches its correlation pyramid): deepcopy refuses tensors with autograd history, so
    those cached tensors are detached in place first (their values unchanged), then the copy is made."""
    import copy

    try:
        return copy.deepcopy(model)
    except RuntimeError as exc:
        if "graph leaves" not in str(exc):
            raise

    def detach(v):
        if isinstance(v, Tensor) and not isinstance(v, nn.Parameter) and v.grad_fn is not None:
            return v.detach()
        if isinstance(v, (list, tuple)):
            new = [detach(t) for t in v]
            if all(a is b for a, b in zip(new, v)):
                return v  # nothing cached in it: the same object, aliases kept
            return new if isinstance(v, list) else tuple(new)
        return v
    for m in model.modules():
        for k, v in list(vars(m).items()):
            new = detach(v) if not k.startswith("_") else v  # _parameters, _buffers, _modules: torch's own
            if new is not v:
                setattr(m, k, new)
    return copy.deepcopy(model)
