"""One-shot methods from calibration data.

``wanda`` (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR
2024): score |W_ij| * ||X_j||_2 with the input norms streamed over ``samples`` calibration inputs
(:mod:`prunelab.calibration`), the same fraction kept in every output row (granularity ``row``; ``nm`` for
N:M); no weight update, and no retraining needed. In a run, the calibration inputs are training inputs.

``sparsegpt`` (Frantar & Alistarh, ICML 2023): every target's mask and surviving weights from its inputs' Gram
matrix X^T X (:func:`prunelab.reconstruction.sparsegpt`: blocks of ``blocksize`` columns, dampening
``percdamp``; ``granularity: nm`` for N:M, otherwise the event's sparsity in every block, over all rows or,
``per_row: true``, in every row). ``allocation`` splits the budget over layers: ``uniform`` (the paper: the
event's sparsity in every layer), or any other allocation ranked by the method's ``criterion`` on the weights
before reconstruction (``global`` magnitude leaves small, sensitive layers denser, as iterative magnitude
pruning does); each layer is then reconstructed at its own sparsity. ``sequential``
(default): the layers are calibrated and pruned in order, each seeing the inputs produced by the layers already
pruned and updated before it, as the paper does (a chain of transformer blocks runs block by block on cached
inputs: :mod:`prunelab.sequential`); otherwise all from the dense model in one pass. The mask and
the new weights are decided together, so it uses :meth:`Method.decide` (with PCA, the two methods whose
decision is not a ranking under a count) and hands the weights back in its event outcome; the model is
written only by the Pruner. While it calibrates layer by layer, the layers already done hold their new weights
(a copy of the original targets is kept until the Pruner installs the result).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..calibration import column_view
from ..sequential import sequential_stats
from ..criteria import Needs
from ..errors import ConfigError
from ..allocation import LayerGroups, Uniform
from ..granularity import NM, Element
from ..reconstruction import sparsegpt
from .base import METHODS, Method, Outcome


@METHODS.register("wanda")
@dataclass
class WandaMethod(Method):
    one_shot: ClassVar[bool] = True
    criterion: Any = None  # {"name": "wanda", "samples": samples}
    granularity: Any = "row"
    allocation: Any = "uniform"
    selector: Any = "topk"
    samples: int = 128

    def __post_init__(self) -> None:
        if self.criterion is None:
            self.criterion = {"name": "wanda", "samples": self.samples}
        super().__post_init__()


@METHODS.register("sparsegpt")
@dataclass
class SparseGPTMethod(Method):
    one_shot: ClassVar[bool] = True
    criterion: Any = "magnitude"  # not used for the decision (see the module docstring); kept for reports
    granularity: Any = "element"
    samples: int = 128
    blocksize: int = 128
    percdamp: float = 0.01
    sequential: bool = True
    per_row: bool = False  # unstructured: the same count in every row of each block (a per-row budget)

    def __post_init__(self) -> None:
        for label, v in (("samples", self.samples), ("blocksize", self.blocksize)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"sparsegpt {label} must be a positive integer, got {v!r}")
        if not (isinstance(self.percdamp, (int, float)) and self.percdamp >= 0):
            raise ConfigError(f"sparsegpt percdamp must be a non-negative number, got {self.percdamp!r}")
        super().__post_init__()
        if not isinstance(self.granularity_, (NM, Element)):
            raise ConfigError("sparsegpt chooses single weights (granularity element) or N:M patterns (nm)")
        if isinstance(self.granularity_, NM) and not isinstance(self.allocation_, Uniform):
            raise ConfigError("sparsegpt with N:M patterns fixes the sparsity of every layer: use allocation uniform")
        self._values: dict = {}

    def needs(self) -> Needs:
        # the one-pass mode takes every Gram matrix from the Pruner; the sequential one streams its own
        return Needs(calibration_samples=self.samples, input_stats=None if self.sequential else "gram")

    def decide(self, view, ctx):
        if ctx.calibration is None:
            raise ConfigError("sparsegpt needs calibration data: call pruner.calibrate(batches) with a few batches "
                              "of model inputs before pruning")
        gran = self.granularity_
        nm = (gran.n, gran.m) if isinstance(gran, NM) else (0, 0)
        masks, self._values = {}, {}
        self._sparsities = self.layer_sparsities(view, ctx)
        groups = [ctx.input_stats] if ctx.input_stats is not None else sequential_stats(
            view.model, view.params, ctx.calibration, ctx.calibration_samples or self.samples, gram=True)
        # sequential: the next layers calibrate on each layer's result, written into the model; those writes are
        # the decision, so they stay (commit) instead of being restored and held a second time for the Pruner
        with view.scratch(commit=self.sequential) as write:
            for stats in groups:  # sequential: each group is measured after the ones before it were written
                for name, st in stats.items():
                    p, layout = view.params[name], view.layouts[name]
                    w, keep = sparsegpt(column_view(layout, p.detach()), st.gram, self._sparsities[name], *nm,
                                        blocksize=self.blocksize, percdamp=self.percdamp, per_row=self.per_row)
                    shape = layout.canonical(p).shape
                    masks[name] = layout.stored(keep.reshape(shape)).contiguous()
                    w = layout.stored(w.reshape(shape))
                    if self.sequential:
                        write(name, w * masks[name])
                    else:
                        self._values[name] = w.contiguous()
        return {name: masks[name] for name in view.params}

    def layer_sparsities(self, view, ctx) -> dict[str, float]:
        """Each target's sparsity for this event: the event's own under ``uniform`` allocation, otherwise the
        allocation's keep counts over single weights scored by the criterion (the weights as they are now)."""
        if isinstance(self.allocation_, Uniform):
            return {n: ctx.sparsity for n in view.params}
        scores = self.criterion_.scores(view.params, ctx)
        layers = []
        for name, p in view.params.items():
            s = scores.pop(name).float().reshape(1, -1).masked_fill(~view.masks[name].reshape(1, -1), float("-inf"))
            layers.append(LayerGroups(name, tuple(p.shape), 1, p.numel(), 1, False,
                                      s if self.allocation_.needs_scores else None))
        keep = self.allocation_.keep_counts(layers, ctx.sparsity, ctx.final_sparsity)
        return {n: 1 - keep[n] / view.params[n].numel() for n in view.params}

    def after_prune(self, view, old, new, ctx) -> Outcome:
        values, self._values = self._values, {}  # empty when sequential: the weights were written in decide
        record = {"reconstructed": len(new)}
        if not isinstance(self.allocation_, Uniform):
            record["layer_sparsity"] = {n: round(s, 6) for n, s in self._sparsities.items()}
        return Outcome(record=record, values={n: (new[n], v) for n, v in values.items()})
