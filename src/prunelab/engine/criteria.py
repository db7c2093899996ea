"""Criteria: how important each weight is.

A criterion maps the prunable parameters to score tensors of the same shapes (higher = more important).
Criteria that need gradients accumulate them in :meth:`Criterion.observe`, which the Pruner calls from
``after_backward()``, and say how many batches they want before an event in :meth:`Criterion.needs`.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from ..calibration.observers import column_view, per_row
from ..errors import ConfigError
from ..registry import Registry, check_count
from ..targets import Layout

if TYPE_CHECKING:
    from ..calibration import Calibration


@dataclass(frozen=True)
class Needs:
    """What a criterion or method needs handed to it before each pruning event.

    The built-in runner provides it (a loop over training batches); in your own loop, call
    ``pruner.after_backward()`` for gradients and ``pruner.calibrate(batches)`` for calibration inputs.
    """

    gradient_batches: int = 0  # batches of loss gradients observed through after_backward() (taylor)
    calibration: "Calibration | None" = None  # what calibration the method asks of the Pruner (pca, wanda, sparsegpt)

    @property
    def calibration_samples(self) -> int:
        """The method's own calibration sample count (0: it does not calibrate)."""
        return self.calibration.samples if self.calibration is not None else 0

    def join(self, other: "Needs") -> "Needs":
        """These needs and ``other``'s (a selector's, read after the criterion's last pass): the larger gradient
        count; one calibration request whose last pass also measures ``other``'s kinds, with this request's
        sample count and order (``other``'s when this one has none)."""
        a, b = self.calibration, other.calibration
        if a is None or b is None:
            cal = a if b is None else b
        else:
            from dataclasses import replace
            cal = replace(a, passes=a.passes[:-1] + (a.passes[-1] | frozenset().union(*b.passes),))
        return Needs(max(self.gradient_batches, other.gradient_batches), cal)


@dataclass(frozen=True)
class Context:
    """What a pruning decision may depend on besides the weights: a seed, the event, and per-event data.

    The per-event data (``input_stats``, ``bn_scales``, ``candidate_threshold``, ``layer_sparsity``) is filled
    by the Pruner from its calibration pipeline (:mod:`prunelab.calibration`) and from what the method's
    ``before_prune`` hook returns, so parts receive it as data instead of having fields set on them. A
    calibrated event is decided group by group: ``group`` names the targets to decide now, ``calibration_pass``
    which pass of the method's request measured ``input_stats``, and ``decided`` the masks earlier groups and
    passes of this event decided (already written into the model).
    """

    seed: int = 0
    event: int = 0  # how many pruning events happened before this one
    sparsity: float = 0.0  # this event's target sparsity
    final_sparsity: float = 0.0  # the schedule's final sparsity
    final: bool = False  # this event reaches the final target (stochastic selectors clean up exactly)
    total_events: int | None = None  # planned number of events, when known
    calibration_samples: int | None = None  # how many calibration inputs the statistics are over
    bn_scales: Mapping[str, Tensor] | None = None  # {weight name: scale of the norm after it} (bn_scale)
    candidate_threshold: float | None = None  # one score threshold for drop candidates over all tensors
    input_stats: Mapping[str, Any] | None = None  # {target: calibration.InputStats}, when the method needs them
    layouts: Mapping[str, Any] | None = None  # {target: targets.Layout}: each weight's (out, in, *kernel) view
    group: tuple[str, ...] | None = None  # the targets this decision covers (None: all of them)
    calibration_pass: int = 0  # which pass of the method's calibration request measured input_stats
    decided: Mapping[str, Tensor] | None = None  # masks decided earlier in this event (groups, passes)
    layer_sparsity: Mapping[str, float] | None = None  # per-target sparsity a method fixed for the event
    weights_before: Mapping[str, Tensor] | None = None  # the targets before the event, when a method asks

    def generator(self, *salt: str | int) -> torch.Generator:
        """A CPU generator determined by (seed, event, salt): stateless, so a resumed run draws the same."""
        key = f"{self.seed}/{self.event}/" + "/".join(map(str, salt))
        return torch.Generator().manual_seed(zlib.crc32(key.encode()) + (self.seed << 32))


class Criterion:
    """Base class: ``scores(params, ctx) -> {name: tensor}``; higher scores are kept."""

    needs_gradients = False

    def needs(self) -> Needs:
        """What must be handed over before each pruning event (default: nothing)."""
        return Needs()

    def scores(self, params: Mapping[str, Tensor], ctx: Context) -> dict[str, Tensor]:
        raise NotImplementedError

    # Criteria whose score of a weight depends on that weight's value alone set ``elementwise`` and define
    # ``score_slice``: the engine then streams scores slice by slice instead of holding them all (global
    # selection over 100M+ weights at the speed of one pass, with no score tensor the size of the model).
    elementwise = False

    def score_slice(self, values: Tensor, out: Tensor) -> None:
        """Write the float32 scores of ``values`` (a flat slice of one weight) into ``out`` (same length),
        equal to the corresponding entries of :meth:`scores` cast to float32."""
        raise NotImplementedError

    def observe(self, params: Mapping[str, Tensor]) -> None:
        """Called after each backward pass; default does nothing."""

    def reset(self) -> None:
        """Forget accumulated statistics (called after each pruning event)."""


CRITERIA: Registry[Criterion] = Registry("criterion", Criterion)


@CRITERIA.register("magnitude")
@dataclass
class Magnitude(Criterion):
    """|w| (L1 per element; group reductions sum it, i.e. the L1 norm of a group)."""

    elementwise = True

    def scores(self, params, ctx):
        return {n: p.detach().abs() for n, p in params.items()}

    def score_slice(self, values, out):
        torch.abs(values, out=out) if values.dtype == out.dtype else out.copy_(values).abs_()


@CRITERIA.register("l2")
@dataclass
class SquaredMagnitude(Criterion):
    """w^2: group reductions sum it, so groups rank by their L2 norm (filter pruning by L2)."""

    elementwise = True

    def scores(self, params, ctx):
        return {n: p.detach().float().square() for n, p in params.items()}

    def score_slice(self, values, out):
        torch.square(values, out=out) if values.dtype == out.dtype else out.copy_(values).square_()


@CRITERIA.register("bn_scale")
@dataclass
class BNScale(Criterion):
    """|gamma| of the BatchNorm after each layer, spread over the output row (a row's sum is |gamma_c|).

    Network Slimming's channel importance. The scales arrive with each pruning event as ``ctx.bn_scales``
    ({weight name: gamma vector}), returned by the ``slimming`` method's ``before_prune``, which knows the graph.
    """

    def scores(self, params, ctx):
        out = {}
        scales = ctx.bn_scales or {}
        for n, p in params.items():
            g = scales.get(n)
            if g is None:
                raise ConfigError(f"bn_scale has no BatchNorm scale for {n}; use it through the slimming method "
                                  "and prune only layers that a BatchNorm follows")
            per_row = p[0].numel()
            out[n] = (g.detach().abs().to(p.device) / per_row).reshape(-1, *([1] * (p.dim() - 1))).expand_as(p)
        return out


@CRITERIA.register("random")
@dataclass
class Random(Criterion):
    """Uniform random scores drawn from (seed, event, parameter name): the random-mask control."""

    def scores(self, params, ctx):
        out = {}
        for n, p in params.items():
            out[n] = torch.rand(p.shape, generator=ctx.generator("random", n)).to(p.device)
        return out


@CRITERIA.register("taylor")
@dataclass
class Taylor(Criterion):
    """First-order Taylor importance: sum over observed batches of |w * dL/dw| (Molchanov et al., 2017).

    ``batches`` is how many batches the runner feeds before each pruning event (in your own loop, every
    ``after_backward()`` call between two pruning events is accumulated).
    """

    batches: int = 8
    needs_gradients = True
    _acc: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        check_count("taylor batches", self.batches)

    def needs(self) -> Needs:
        return Needs(gradient_batches=self.batches)

    def observe(self, params):
        for n, p in params.items():
            if p.grad is None:
                continue
            contrib = (p.detach() * p.grad.detach()).abs()
            if n in self._acc:
                self._acc[n] += contrib
            else:
                self._acc[n] = contrib.clone()

    def scores(self, params, ctx):
        if not self._acc:
            raise ConfigError("the taylor criterion has no gradients yet: call pruner.after_backward() after "
                              "loss.backward() for a few batches before the pruning step")
        return {n: self._acc.get(n, torch.zeros_like(p)) for n, p in params.items()}

    def reset(self):
        self._acc.clear()


@dataclass
class _Calibrated(Criterion):
    """A criterion scored from calibration statistics of one ``kind``, over ``samples`` inputs."""

    samples: int = 128
    kind = "norms"

    def __post_init__(self):
        check_count(f"{self.registered_name} samples", self.samples)

    def needs(self) -> Needs:
        from ..calibration.request import Calibration

        return Needs(calibration=Calibration(self.samples, (self.kind,)))

    def _stats(self, ctx: Context) -> Mapping[str, Any]:
        if ctx.input_stats is None:
            raise ConfigError(f"the {self.registered_name} criterion needs calibration data: call "
                              "pruner.calibrate(batches) with a few batches of model inputs before pruning")
        return ctx.input_stats

    def _columns(self, params, ctx, score) -> dict[str, Tensor]:
        """Per target, ``score(|W|, norms)`` on its (rows, columns) view in float64 (``|W|`` the absolute weights,
        ``norms`` the input norm of each column, (columns,) or per conv group (groups, columns)), back in the
        weight's layout and float32."""
        stats = self._stats(ctx)
        out = {}
        for n, p in params.items():
            layout = (ctx.layouts or {}).get(n) or Layout()
            w = column_view(layout, p.detach()).abs().double()
            s = score(w, stats[n].norms().to(w.device).double())
            out[n] = layout.stored(s.float().reshape(layout.canonical(p).shape))
        return out


@CRITERIA.register("wanda")
@dataclass
class Wanda(_Calibrated):
    """|W_ij| * ||X_j||_2: a weight's magnitude times the norm of the input it multiplies, over calibration data.

    Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models" (Wanda, ICLR
    2024). The input norms come from the Pruner's streamed statistics (:mod:`prunelab.calibration`) over
    ``samples`` calibration inputs given to ``pruner.calibrate(batches)``; a convolution's columns are its
    unfolded receptive fields. Wanda compares scores within each output row (granularity ``row``, the
    ``wanda`` method's default) or within N:M groups.
    """

    def scores(self, params, ctx):
        return self._columns(params, ctx, lambda w, norms: w * per_row(norms, w.shape[0]))


@CRITERIA.register("ria")
@dataclass
class RIA(_Calibrated):
    """Relative importance and activations: (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** a.

    Zhang, Zhao, Lin, Liu, Ye, Zhao, "Plug-and-Play: An Efficient Post-training Pruning Method for Large
    Language Models" (RIA, ICLR 2024): a weight's share of its input column's and of its output row's total
    magnitude, times the input norm to the power ``a`` (the authors' 0.5; the norm up to the constant
    1 / sqrt(samples) their statistics carry, which does not change a ranking). As the authors compare them:
    within each output row (the ``wanda`` method with ``criterion: ria``). A grouped convolution's columns are
    summed within each conv group's rows, whose inputs they are. Written from the paper and the authors'
    ``prune_ria`` (their channel permutation for N:M is not part of this criterion).
    """

    a: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        # the authors search a in [0, 1]; beyond 4 the factor ||X_j||^a overflows float32 for norms above 1e10
        # (and already decides the order alone), so a larger exponent is a typo, not a setting
        if not (isinstance(self.a, (int, float)) and not isinstance(self.a, bool) and math.isfinite(self.a)
                and 0 <= self.a <= 4):
            raise ConfigError(f"ria a must be a number from 0 to 4 (the authors use 0.5), got {self.a!r}")

    def scores(self, params, ctx):
        def ria(w, norms):
            g = w.reshape(norms.shape[0] if norms.dim() > 1 else 1, -1, w.shape[1])  # rows by conv group
            rel = g / g.sum(1, keepdim=True).clamp_min(1e-300) + g / g.sum(2, keepdim=True).clamp_min(1e-300)
            return rel.reshape(w.shape) * per_row(norms, w.shape[0]) ** self.a
        return self._columns(params, ctx, ria)


@CRITERIA.register("fluctuation")
@dataclass
class Fluctuation(_Calibrated):
    """Var(x_j) * W_ij^2: how much the input a weight multiplies fluctuates over the calibration tokens, times the
    weight's square; summed down a column, FLAP's weighted input feature variance ||W_:j||^2 Var(x_j).

    An, Zhao, Yu, Tang, Wang, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (FLAP,
    AAAI 2024): an input channel whose value barely moves can go, its mean being recoverable. Written from the
    paper and the authors' ``metrics["WIFV"]``; the variance here is the population variance over every
    calibration token (theirs a running estimate counted in sequences, the same ranking within a layer up to
    their estimator's bias). For units of structure FLAP scores a unit by the layer that reads it (the down
    projection's column of an MLP channel, the output projection's of a head): ``transformer_units``
    ``score_from: readers``.
    """

    kind = "sums"

    def scores(self, params, ctx):
        stats = self._stats(ctx)
        out = {}
        for n, p in params.items():
            layout = (ctx.layouts or {}).get(n) or Layout()
            w = column_view(layout, p.detach()).double()
            var = stats[n].variance().to(w.device)
            if var.numel() != w.shape[1]:
                raise ConfigError(f"the fluctuation criterion reads whole input columns, and {n}'s rows see a part "
                                  "of them (a grouped convolution); exclude it from the targets")
            out[n] = layout.stored((w.square() * var).float().reshape(layout.canonical(p).shape))
        return out


@CRITERIA.register("activation")
@dataclass
class Activation(_Calibrated):
    """E|x_j|, the mean magnitude of the input channel a weight multiplies over the calibration tokens, the same
    for every weight of a column (the weight's own value does not enter).

    Summed over a unit of structure (:mod:`prunelab.structure`) it ranks MLP channels by the mean |activation|
    the down projection reads, heads by that of their outputs, and hidden channels by that of the normalized
    stream the readers see, as Minitron ranks them (Muralidharan et al., "Compact Language Models via Pruning
    and Knowledge Distillation", NeurIPS 2024: activation magnitudes over calibration tokens, no gradients).
    """

    kind = "mean_abs"

    def scores(self, params, ctx):
        stats = self._stats(ctx)
        out = {}
        for n, p in params.items():
            layout = (ctx.layouts or {}).get(n) or Layout()
            a = stats[n].inputs.mean_abs().float().to(p.device)
            rows = column_view(layout, p.detach())
            if a.numel() != rows.shape[1]:  # a convolution's columns are (channel, kernel position)
                if rows.shape[1] % a.numel():
                    raise ConfigError(f"the activation criterion reads whole input channels, and {n} is a grouped "
                                      "convolution, whose rows see a part of them; exclude it from the targets")
                a = a.repeat_interleave(rows.shape[1] // a.numel())
            out[n] = layout.stored(a.expand_as(rows).reshape(layout.canonical(p).shape).contiguous())
        return out
