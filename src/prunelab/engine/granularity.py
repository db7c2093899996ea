"""Granularity: what is removed together.

A granularity views a weight tensor as a matrix of *groups* with shape (B, G): B blocks of G groups, every
group the same number of elements. Scores of a group are summed (the L1 norm of the group for magnitude
scores). When ``per_block`` is False the selector picks any groups (B is 1); when it is True every block
keeps the same number of groups (N:M keeps n of every m, window keeps the same count in every kernel).

Contract of every granularity, for a tensor of shape ``shape``:
  ``group_scores(scores)`` -> (B, G) float;  ``alive(mask)`` -> (B, G) bool (a group is alive when any of its
  elements is); ``expand(groups, shape)`` -> bool tensor of ``shape``; ``group_size(shape)`` -> elements per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry, check_count
from .topk import any_rows


class Granularity:
    """What is removed together: how a weight's scores become (B, G) group scores and a kept choice a mask.

    A granularity views every weight as (out, in, *kernel) and answers: ``group_scores(scores)`` (B blocks x G
    groups, each the sum of its elements' scores), ``alive(mask)`` (a group is alive while any element is),
    ``group_size(shape)`` and ``expand(kept, shape)`` back to a mask; ``check(name, shape)`` refuses shapes it
    cannot apply to (the target is then skipped with the reason). ``per_block``: the selector keeps the same
    count in every block (N:M, window); ``fixed_density``: the density the pattern itself fixes, if any.
    ``steps(sparsity, final)``: the passes of one event (one, unless a pattern prunes in stages). Registered with
    ``@GRANULARITIES.register(name)``; ``tests/engine/test_contracts.py`` tests a new one without a line added."""

    per_block = False
    fixed_density: float | None = None  # set by patterns that fix the density (N:M)

    def _view(self, t: Tensor) -> Tensor:
        """(B, G, S) view of a tensor: blocks, groups, elements per group."""
        raise NotImplementedError

    def _unview(self, v: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of ``_view`` for a (B, G, S) tensor."""
        raise NotImplementedError

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise ConfigError when this granularity cannot apply to a tensor of this shape."""

    def steps(self, sparsity: float, final_sparsity: float) -> list[tuple["Granularity", float, float]]:
        """The selection passes of one pruning event: (granularity, sparsity, final sparsity) each.

        One pass for every granularity but composites such as ``combined`` (kernels, then windows).
        """
        return [(self, sparsity, final_sparsity)]

    def group_size(self, shape: tuple[int, ...]) -> int:
        import math
        b, g = self.n_groups(shape)
        return math.prod(shape) // (b * g)

    def n_groups(self, shape: tuple[int, ...]) -> tuple[int, int]:
        import torch
        v = self._view(torch.empty(shape, device="meta"))
        return v.shape[0], v.shape[1]

    def group_scores(self, scores: Tensor) -> Tensor:
        v = self._view(scores)
        return v[..., 0] if v.shape[2] == 1 else v.sum(dim=2)

    def alive(self, mask: Tensor) -> Tensor:
        v = self._view(mask)
        return v[..., 0] if v.shape[2] == 1 else any_rows(v.reshape(-1, v.shape[2])).reshape(v.shape[:2])

    def expand(self, groups: Tensor, shape: tuple[int, ...]) -> Tensor:
        b, g = groups.shape
        s = self.group_size(tuple(shape))
        return self._unview(groups.unsqueeze(2).expand(b, g, s), tuple(shape))


GRANULARITIES: Registry[Granularity] = Registry("granularity", Granularity)


@GRANULARITIES.register("element")
@dataclass
class Element(Granularity):
    """Unstructured: every weight on its own."""

    def _view(self, t):
        return t.reshape(1, -1, 1)

    def _unview(self, v, shape):
        return v.reshape(shape)


@GRANULARITIES.register("filter")
@dataclass
class Filter(Granularity):
    """Output channels (conv filters, rows of a linear weight)."""

    def _view(self, t):
        return t.reshape(1, t.shape[0], -1)

    def _unview(self, v, shape):
        return v.reshape(shape)


@GRANULARITIES.register("row")
@dataclass
class Row(Granularity):
    """Single weights, the same count kept in every output row (Wanda's comparison group: each output's inputs
    compete only with each other)."""

    per_block = True

    def _view(self, t):
        return t.reshape(t.shape[0], -1, 1)

    def _unview(self, v, shape):
        return v.reshape(shape)


@GRANULARITIES.register("input_channel")
@dataclass
class InputChannel(Granularity):
    """Input channels (dim 1: conv input channels, columns of a linear weight)."""

    def _view(self, t):
        return t.transpose(0, 1).reshape(1, t.shape[1], -1)

    def _unview(self, v, shape):
        return v.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)


@GRANULARITIES.register("kernel")
@dataclass
class Kernel(Granularity):
    """Whole k x k kernels (one per (output, input) channel pair); a linear weight's kernels are its entries.

    ``per_filter=True`` keeps the same number of kernels in every filter (Campfire's kernel sparsity).
    """

    per_filter: bool = False

    def __post_init__(self):
        self.per_block = self.per_filter

    def _view(self, t):
        out, inp = t.shape[0], t.shape[1]
        if self.per_filter:
            return t.reshape(out, inp, -1)
        return t.reshape(1, out * inp, -1)

    def _unview(self, v, shape):
        return v.reshape(shape)


@GRANULARITIES.register("window")
@dataclass
class Window(Granularity):
    """Within-kernel: every k x k kernel keeps the same number of its own weights (Campfire's window).

    Tensors without a spatial kernel (1x1 convolutions, linear layers) use runs of ``group`` consecutive
    input channels as their windows, each keeping the same count (N:M-style with a free N).
    """

    group: int = 4
    per_block = True

    def _spatial(self, shape) -> bool:
        return len(shape) >= 3 and math.prod(shape[2:]) > 1

    def check(self, name, shape):
        if not self._spatial(shape) and (len(shape) < 2 or shape[1] % self.group):
            raise ConfigError(f"window granularity on {name} (shape {list(shape)}, no spatial kernel) needs input "
                              f"channels divisible by group={self.group}")

    def _view(self, t):
        if self._spatial(t.shape):
            return t.reshape(t.shape[0] * t.shape[1], -1, 1)
        return t.movedim(1, -1).reshape(-1, self.group, 1)

    def _unview(self, v, shape):
        if self._spatial(shape):
            return v.reshape(shape)
        return v.reshape((shape[0], *shape[2:], shape[1])).movedim(-1, 1)


@GRANULARITIES.register("combined")
@dataclass
class Combined(Granularity):
    """Kernel sparsity, then window sparsity inside the surviving kernels (Campfire's combined pattern).

    A target sparsity s is split as (1 - s) = (1 - s_k)(1 - s_w) with s_k = ``kernel_share`` * s: first whole
    kernels go, the same number in every filter; then every surviving kernel keeps the same count. For
    tensors without a spatial kernel (linear, 1x1) a run of ``group`` consecutive input channels plays the
    kernel's part, as it does for ``window``.
    """

    kernel_share: float = 0.5
    group: int = 4

    def __post_init__(self):
        if not 0 <= self.kernel_share < 1:
            raise ConfigError(f"combined kernel_share must be in [0, 1), got {self.kernel_share}")
        self._kernel = _KernelRuns(group=self.group)
        self._window = Window(group=self.group)

    def check(self, name, shape):
        self._window.check(name, shape)

    def _split(self, s: float) -> tuple[float, float]:
        s_k = self.kernel_share * s
        return s_k, 1 - (1 - s) / (1 - s_k)

    def steps(self, sparsity, final_sparsity):
        (k, w), (kf, wf) = self._split(sparsity), self._split(final_sparsity)
        return [(self._kernel, k, kf), (self._window, w, wf)]

    def _view(self, t):  # as a single view (alive/structure queries) it is the window view
        return self._window._view(t)

    def _unview(self, v, shape):
        return self._window._unview(v, shape)


@dataclass
class _KernelRuns(Granularity):
    """Combined's first pass: kernels balanced per filter, or runs of ``group`` inputs for non-spatial tensors."""

    group: int = 4
    per_block = True

    def _view(self, t):
        if len(t.shape) >= 3 and math.prod(t.shape[2:]) > 1:
            return t.reshape(t.shape[0], t.shape[1], -1)
        return t.reshape(t.shape[0], t.shape[1] // self.group, self.group)

    def _unview(self, v, shape):
        return v.reshape(shape)


@GRANULARITIES.register("nm")
@dataclass
class NM(Granularity):
    """N:M: in every run of ``m`` consecutive input channels (at each output and kernel position) ``n`` survive.

    N:M fixes the density at n/m; a requested sparsity other than 1 - n/m is a ConfigError. ``permute``
    (``heuristic`` or ``lsa``) first reorders the channels a transformer MLP's down projection reads, moving the
    up-side rows with them, so that its blocks keep more score (RIA's channel permutation,
    :mod:`prunelab.engine.permutation`; ``window`` blocks per assignment).
    """

    n: int = 2
    m: int = 4
    permute: str = "none"
    window: int = 256
    per_block = True

    def __post_init__(self):
        from .permutation import MODES

        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n <= self.m):
            raise ConfigError(f"N:M needs integers 0 < n <= m, got n={self.n}, m={self.m}")
        if self.permute not in MODES:
            raise ConfigError(f"N:M permute is one of {', '.join(MODES)}, got {self.permute!r}")
        check_count("N:M window", self.window, low=2, why="blocks per assignment")
        self.fixed_density = self.n / self.m

    def check(self, name, shape):
        if len(shape) < 2 or shape[1] % self.m:
            raise ConfigError(f"N:M with m={self.m} needs input channels divisible by {self.m}; "
                              f"{name} has shape {list(shape)}")

    def _view(self, t):
        # move the input-channel dim last so each block is m consecutive input channels
        moved = t.movedim(1, -1)
        return moved.reshape(-1, self.m, 1)

    def _unview(self, v, shape):
        moved_shape = (shape[0], *shape[2:], shape[1])
        return v.reshape(moved_shape).movedim(-1, 1)


@GRANULARITIES.register("block")
@dataclass
class Block(Granularity):
    """Rectangular blocks of a 2-D view (rows = output channels, columns = the rest), ``rows x cols``."""

    rows: int = 4
    cols: int = 4

    def check(self, name, shape):
        import math
        r, c = shape[0], math.prod(shape[1:])
        if r % self.rows or c % self.cols:
            raise ConfigError(f"block {self.rows}x{self.cols} does not tile {name} viewed as {r}x{c}")

    def _view(self, t):
        r, c = t.shape[0], t[0].numel()
        v = t.reshape(r // self.rows, self.rows, c // self.cols, self.cols).permute(0, 2, 1, 3)
        return v.reshape(1, -1, self.rows * self.cols)

    def _unview(self, v, shape):
        import math
        r, c = shape[0], math.prod(shape[1:])
        v = v.reshape(r // self.rows, c // self.cols, self.rows, self.cols).permute(0, 2, 1, 3)
        return v.reshape(shape)
