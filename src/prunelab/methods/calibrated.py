"""One-shot methods from calibration data.

``wanda`` (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR
2024): score |W_ij| * ||X_j||_2 with the input norms streamed over ``samples`` calibration inputs
(:mod:`prunelab.calibration`), the same fraction kept in every output row (granularity ``row``; ``nm`` for
N:M); no weight update, and no retraining needed. In a run, the calibration inputs are training inputs.

``sparsegpt`` (Frantar & Alistarh, ICML 2023): every target's mask and surviving weights from its inputs' Gram
matrix X^T X (:func:`prunelab.engine.reconstruction.sparsegpt`: blocks of ``blocksize`` columns, dampening
``percdamp``; ``granularity: nm`` for N:M, otherwise the event's sparsity in every block, over all rows or,
``per_row: true``, in every row). ``allocation`` splits the budget over layers: ``uniform`` (the paper: the
event's sparsity in every layer), or any other allocation ranked by the method's ``criterion`` on the weights
before reconstruction (``global`` magnitude leaves small, sensitive layers denser, as iterative magnitude
pruning does); each layer is then reconstructed at its own sparsity, fixed once per event in
``before_prune``. The mask and the new weights are decided together, so it uses :meth:`Method.decide`, once per
group of the calibration pipeline, and returns both in a :class:`~prunelab.methods.base.Decision`; the Pruner
writes them before the next group is measured and holds no copy of the original weights. Statistics and the
solve are in float32 unless calibration asks for float64 (the authors' precision; see the README's figures).
A layer whose Gram matrix stays singular after dampening is pruned by magnitude without an update (as
llm-compressor falls back), warned about and named in the event's record (``unreconstructed``): one
ill-conditioned layer should not discard an event that took hours, and the record keeps it visible.

``sequential`` (both methods; default true, as the papers' released code): the layers are calibrated and pruned
in order, each seeing the inputs the layers already pruned (and updated) produce; a chain of transformer
blocks runs block by block on cached inputs (:mod:`prunelab.calibration.pipeline`). ``sequential: false``:
every layer from the dense model in one pass. Both leave a language model's output layer dense by default.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar


from ..registry import check_count
from ..engine.allocation import LayerGroups, Uniform
from ..engine.loop import Selection, budget
from ..calibration.observers import column_view
from ..calibration.request import Calibration
from ..engine.criteria import Needs
from ..errors import ConfigError
from ..engine.granularity import NM, Element
from ..engine.reconstruction import sparsegpt
from ..engine.selection import TopK
from .base import METHODS, Decision, Method


@METHODS.register("wanda")
@dataclass
class WandaMethod(Method):
    """Wanda (Sun et al. 2024): which weights go, by |w| times the norm of their input over calibration samples.

    Compared within each output row (granularity ``row``), the same sparsity per layer, statistics gathered
    block by block when ``sequential``."""

    one_shot: ClassVar[bool] = True
    output_layer: ClassVar[bool] = False
    criterion: Any = None  # {"name": "wanda", "samples": samples}
    granularity: Any = "row"
    allocation: Any = "uniform"
    selector: Any = "topk"
    samples: int = 128
    sequential: bool = True

    def __post_init__(self) -> None:
        if self.criterion is None:
            self.criterion = {"name": "wanda", "samples": self.samples}
        if not isinstance(self.sequential, bool):
            raise ConfigError(f"wanda sequential must be true or false, got {self.sequential!r}")
        super().__post_init__()  # a sequential pipeline method needs allocation uniform: the Pruner says so

    def needs(self) -> Needs:
        request = self.criterion_.needs().calibration
        if request is None:
            return self.criterion_.needs()
        return Needs(calibration=Calibration(request.samples, request.passes, sequential=self.sequential))


@METHODS.register("sparsegpt")
@dataclass
class SparseGPTMethod(Method):
    """SparseGPT (Frantar & Alistarh 2023): which weights go and what the survivors become, from calibration.

    Per layer, the mask and the reconstructed weights from the inputs' Gram matrix (blocked OBS updates of
    ``blocksize`` columns, dampened by ``percdamp``), block by block when ``sequential``; see the module
    docstring."""

    one_shot: ClassVar[bool] = True
    output_layer: ClassVar[bool] = False
    criterion: Any = "magnitude"  # not used for the decision (see the module docstring); kept for reports
    granularity: Any = "element"
    samples: int = 128
    blocksize: int = 128
    percdamp: float = 0.01
    sequential: bool = True
    per_row: bool = False  # unstructured: the same count in every row of each block (a per-row budget)

    def __post_init__(self) -> None:
        for label, v in (("samples", self.samples), ("blocksize", self.blocksize)):
            check_count(f"sparsegpt {label}", v)
        if not (isinstance(self.percdamp, (int, float)) and self.percdamp >= 0):
            raise ConfigError(f"sparsegpt percdamp must be a non-negative number, got {self.percdamp!r}")
        if not isinstance(self.sequential, bool):
            raise ConfigError(f"sparsegpt sequential must be true or false, got {self.sequential!r}")
        super().__post_init__()
        if not isinstance(self.granularity_, (NM, Element)):
            raise ConfigError("sparsegpt chooses single weights (granularity element) or N:M patterns (nm)")
        if isinstance(self.granularity_, NM) and self.granularity_.permute != "none":
            raise ConfigError("sparsegpt updates the weights as it prunes and does not permute channels; use N:M "
                              "permute with wanda (criterion wanda or ria) or magnitude")
        if isinstance(self.granularity_, NM) and not isinstance(self.allocation_, Uniform):
            raise ConfigError("sparsegpt with N:M patterns fixes the sparsity of every layer: use allocation uniform")
        if self._ranks_by_calibration() and self.sequential:
            raise ConfigError(f"sparsegpt with allocation {self.allocation_.registered_name} ranks layers by "
                              f"{self.criterion_.registered_name} scores of the dense model, measured in one pass: "
                              "set sequential: false")
        if type(self.selector_) is not TopK:
            raise ConfigError(f"sparsegpt chooses its masks while it reconstructs; selector "
                              f"{self.selector_.registered_name} cannot apply (use it with wanda or magnitude)")

    def needs(self) -> Needs:
        kinds = {"gram"}
        if self._ranks_by_calibration():  # what the allocation's criterion reads, measured in the same pass
            kinds |= set().union(*self.criterion_.needs().calibration.passes)
        return Needs(calibration=Calibration(self.samples, (frozenset(kinds),), sequential=self.sequential))

    def _ranks_by_calibration(self) -> bool:
        """The allocation ranks layers by a calibrated criterion (OWL over Wanda scores): their sparsities come
        from the one group of a non-sequential pass, not from the weights alone before it."""
        return not isinstance(self.allocation_, Uniform) and self.criterion_.needs().calibration is not None

    def before_prune(self, view, ctx) -> dict:
        """Each layer's sparsity, fixed once for the event from the weights before any reconstruction (from the
        statistics, in :meth:`decide`, when the criterion is calibrated)."""
        if isinstance(self.allocation_, Uniform) or self._ranks_by_calibration():
            return {}
        return {"layer_sparsity": self.layer_sparsities(view, ctx)}

    def _solve(self, w, gram, sparsity: float, nm: tuple[int, int], experts: bool = False):
        """:func:`sparsegpt` of one weight (its Gram matrix spent); a grouped convolution's (groups, columns, columns) Gram matrices
        solve each group's output rows in one batched call, the layer's count chosen across them; a fused
        experts tensor's, each expert at ``sparsity`` on its own."""
        if gram.dim() == 3:
            w = w.reshape(gram.shape[0], -1, w.shape[-1])
        new, keep, ok = sparsegpt(w, gram, sparsity, *nm, blocksize=self.blocksize, percdamp=self.percdamp,
                                  per_row=self.per_row, joint=not experts, consume=True)
        return new.reshape(-1, new.shape[-1]), keep.reshape(-1, keep.shape[-1]), ok

    def decide(self, view, ctx) -> Decision:
        """Masks and reconstructed weights of the group ``ctx.group`` from its Gram matrices; the Pruner writes
        them before the next group is measured."""
        gran = self.granularity_
        nm = (gran.n, gran.m) if isinstance(gran, NM) else (0, 0)
        if self._ranks_by_calibration() and ctx.layer_sparsity is None:  # one group: every target, dense stats
            ctx = replace(ctx, layer_sparsity=self.layer_sparsities(view, ctx))
        masks, values, singular, dead = {}, {}, [], {}
        for name in ctx.group:
            p, layout, st = view.params[name], view.layouts[name], ctx.input_stats[name]
            sparsity = ctx.sparsity if ctx.layer_sparsity is None else ctx.layer_sparsity[name]
            unreached = st.gram.diagonal(dim1=-2, dim2=-1) == 0  # (columns,) or per conv group (groups, columns)
            # the solve factors the Gram matrix in place: it is spent (one (n, n) copy less at the peak)
            w, keep, ok = self._solve(column_view(layout, p.detach()), st.gram, sparsity, nm, bool(layout.experts))
            if not ok:
                singular.append(name)
            if bool((keep.reshape(unreached.numel() // unreached.shape[-1], -1, keep.shape[-1])
                     & unreached.reshape(-1, 1, unreached.shape[-1])).any()):  # more than the budget could take
                dead[name] = round(float(unreached.float().mean()), 4)
            shape = layout.canonical(p).shape
            masks[name] = layout.stored(keep.reshape(shape)).contiguous()
            values[name] = layout.stored(w.reshape(shape)).contiguous()
        record: dict = {"reconstructed": len(masks)}
        if singular:
            warnings.warn(f"sparsegpt: the Gram matrix of {', '.join(singular[:3])} is not positive definite even "
                          "after dampening; those layers were pruned by magnitude without reconstruction (more "
                          "calibration samples or a larger percdamp avoid it)", stacklevel=2)
            record["unreconstructed"] = {n: "Gram matrix not positive definite" for n in singular}
        if dead:
            warnings.warn(f"sparsegpt: calibration never reached {dead[next(iter(dead))]:.0%} of the input columns of "
                          f"{', '.join(list(dead)[:3])}{' ...' if len(dead) > 3 else ''}, more than the budget prunes; "
                          "the rest were kept unchanged (a dilated convolution's taps reading only padding? calibrate "
                          "on inputs of the size the model is used at)", stacklevel=2)
            record["unreached_columns"] = dead
        if ctx.layer_sparsity is not None:
            record["layer_sparsity"] = {n: round(ctx.layer_sparsity[n], 6) for n in ctx.group}
        return Decision(masks, values, record)

    def layer_sparsities(self, view, ctx) -> dict[str, float]:
        """Each target's sparsity for this event: the allocation's keep counts over single weights scored by
        the criterion (the weights as they are now)."""
        scores = self.criterion_.scores(view.params, ctx)
        layers = []
        for name, p in view.params.items():
            s = scores.pop(name).float().reshape(1, -1).masked_fill(~view.masks[name].reshape(1, -1), float("-inf"))
            layers.append(LayerGroups(name, tuple(p.shape), 1, p.numel(), 1, False,
                                      s if self.allocation_.needs_scores else None))
        keep = budget(layers, Selection(self.allocation_, self.selector_, ctx.sparsity, ctx.final_sparsity, ctx))
        return {n: 1 - keep[n] / view.params[n].numel() for n in view.params}
