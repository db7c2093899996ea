"""Calibration: one owner of what the layers see, for every calibrated method.

A method declares one :class:`Calibration` request on its ``needs()`` (how many samples, which statistics per
pass, sequential or not); the Pruner alone reads the caller's batches once (:mod:`.batches`), resolves the
sample count once (the caller's, else the method's: :meth:`Options.resolve_samples`), and walks the groups of
:func:`groups` (:mod:`.pipeline`), deciding and writing each before the next is measured. Methods receive the
statistics (:class:`InputStats`, :mod:`.observers`) on the event's Context and never see a batch.
"""
from .batches import materialise
from .observers import InputStats, Moments, column_view, owners
from .pipeline import Group, groups
from .request import Calibration, Options, options

__all__ = ["Calibration", "Group", "InputStats", "Moments", "Options", "column_view", "groups", "materialise",
           "options", "owners", "input_stats"]


def input_stats(model, targets, batches, samples: int, gram: bool = False, precision: str = "float32",
                kinds: tuple[str, ...] | None = None, pairs: bool | None = None):
    """Every target's :class:`InputStats` (norms, and Gram matrices with ``gram``; or the given ``kinds``) over
    the first ``samples`` inputs of ``batches``, from the dense model in one pass: the pipeline's non-sequential
    group. ``pairs``: whether a 2-item batch is (inputs, targets) (see :func:`.batches.pairs_hold_targets`)."""
    request = Calibration(samples, (frozenset(kinds or {"gram" if gram else "norms"}),))
    chunks = materialise(batches, samples, pairs, model.forward)
    run = groups(model, targets, request, chunks, Options(precision=precision))
    try:
        return next(run).stats
    finally:
        run.close()
