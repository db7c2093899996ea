"""How many torch threads a run uses.

torch's default is one intra-op thread per core. On small layers a second thread buys little, and when
another process keeps a core busy the threads of one operation wait on each other at every layer: measured
here, the quickstart took 103 s with two threads against a busy core and 8 s with one. So a run whose work per
training batch is small (under ``SMALL_MACS`` multiply-accumulates: the model's per-sample MACs times the batch
size) uses one thread; larger runs keep torch's default. ``--threads`` or the recipe's ``threads`` decide
instead, and so does an ``OMP_NUM_THREADS`` set in the environment.
"""
from __future__ import annotations

import os

SMALL_MACS = 1e9
#: More threads than this is a typo (torch segfaults at 100,000): four per core.
MAX_THREADS = 4 * (os.cpu_count() or 1)


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
    if macs < SMALL_MACS:
        return 1, f"small work ({macs / 1e6:,.0f}M multiply-accumulates per batch): one thread is fastest"
    return None, f"{macs / 1e9:,.1f}G multiply-accumulates per batch: torch's default"
