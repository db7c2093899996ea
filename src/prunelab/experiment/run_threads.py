"""How many torch threads a run uses: the policy of :mod:`prunelab.training.threads` (one thread for small work, else
torch's default) applied to the recipe's model and training batch. ``--threads`` or the recipe's ``threads`` decide
instead, and so does an ``OMP_NUM_THREADS`` set in the environment.
"""
from __future__ import annotations

import os

from ..limits import MAX_THREADS  # noqa: F401  (re-exported: the bound of --threads and recipe.threads)
from ..training.threads import for_work


def choose_threads(ctx, requested: int | None = None) -> tuple[int | None, str]:
    """(threads to set, or None to leave torch's default; the reason in words)."""
    if requested is not None:
        return requested, "as asked"
    if ctx.recipe.threads is not None:
        return ctx.recipe.threads, "as the recipe asks"
    if os.environ.get("OMP_NUM_THREADS"):
        return None, "OMP_NUM_THREADS is set"
    if ctx.dist.world > 1:
        return None, "one process per rank"
    if not ctx.recipe.device.startswith("cpu"):
        return None, f"the model runs on {ctx.recipe.device}"
    if ctx.recipe.model.name.startswith("hf:/") or ctx.recipe.model.name.startswith("hf:."):
        return None, "a pretrained model from a folder: torch's default"  # not loaded twice to measure it
    from ..analysis import count_flops

    try:
        macs = count_flops(ctx.build_model(), tuple(ctx.spec.input_shape), ctx.recipe.device,
                           ctx.spec.input_dtype)["dense"] * ctx.recipe.data.batch_size
    except (RuntimeError, ValueError, TypeError, IndexError):  # the run will say what is wrong with the model
        return None, "the work could not be measured: torch's default"
    return for_work(macs)
