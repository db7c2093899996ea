"""Check, then trust: the one test that a cut model computes what the masked model computes.

Every physical cut (:func:`prunelab.structure.surgery.shrink` for traced channels, heads and recurrent units;
:func:`prunelab.structure.hf_surgery.shrink_hf` for transformer units; the trial shrinks of
:mod:`prunelab.structure.probe`) compares against the same reference, built here: the model with its pruned
weights at zero (and, where the structure holds them, the removed units' companions), compared in float64 on the
example inputs and on random inputs like them.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import ShrinkError, first_line
from ..inputs import Inputs, copy_model, max_output_diff, random_like, to_double


def zero_masked(model: nn.Module, masks: Mapping[str, Tensor], companions: Mapping[str, Tensor] | None = None) -> None:
    """Zero the pruned weights of ``model`` in place, and the entries ``companions`` holds at zero (keep-masks:
    False = zero); a mask may name any alias of a tied weight."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].dtype))
        for name, keep in (companions or {}).items():
            params[name].mul_(keep.to(params[name].dtype))


def masked_reference(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` in eval mode with its pruned weights at zero and everything else as it is (the
    trained model's companions untouched: a removed unit whose bias was not held at zero then fails the check)."""
    masked = copy_model(model).eval()
    zero_masked(masked, masks)
    return masked


def check_same_outputs(masked: nn.Module, small: nn.Module, example_inputs: Inputs, atol: float,
                       differs: Callable[[float], str], cannot_run: Callable[[str], str] | None = None,
                       check_inputs: Inputs | None = None) -> None:
    """ShrinkError unless ``small`` computes what ``masked`` computes to ``atol`` (max abs difference, float64) on
    ``example_inputs``, random inputs like them (seed 0) and ``check_inputs``. ``differs(diff)`` and
    ``cannot_run(first line of the error)`` word the failure (``cannot_run`` None: run errors propagate).
    ``masked`` is consumed (cast to float64 in place); ``small`` is copied."""
    checks = [example_inputs, random_like(example_inputs, torch.Generator().manual_seed(0))]
    if check_inputs is not None:
        checks.append(check_inputs)
    # float64: a deep net's float32 outputs differ by summation order alone (1e-4 at outputs of ~400 for an
    # untrained ResNet-56), which would hide nothing but make the tolerance scale-dependent
    masked64, small64 = masked.double(), copy_model(small).double()
    for m in (masked64, small64):  # transformers' grouped-matmul experts have no float64 kernel; its loop has
        config = getattr(m, "config", None)
        if getattr(config, "_experts_implementation", None) not in (None, "eager"):
            config._experts_implementation = "eager"
    try:
        diff = max(max_output_diff(masked64, small64, to_double(x)) for x in checks)
    except (RuntimeError, ValueError, IndexError) as exc:  # widths that no longer fit each other
        if cannot_run is None:
            raise
        raise ShrinkError(cannot_run(first_line(exc, 200))) from None
    if not diff <= atol:
        raise ShrinkError(differs(diff))
