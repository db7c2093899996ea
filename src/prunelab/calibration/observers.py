"""Observers: what each target layer sees, accumulated by forward hooks without holding any activation.

For every target weight W, viewed as a matrix (out, in * kernel) in the engine's (out, in, *kernel) layout, the
layer's inputs are rearranged into rows X of the same in * kernel columns (a linear layer: one row per token or
sample; a convolution: one row per output position, its receptive field unfolded as im2col), so that the layer
computes X W^T. One observer, six kinds of statistic (:class:`InputStats`):

- ``norms``: ``sq``, the sum over rows of x_j^2, the squared column norms ||X_j||^2 (Wanda's statistic);
- ``gram``: X^T X as well (SparseGPT's layer Hessian up to a factor 2);
- ``sums``: the column sums of X as well, so each column's mean and variance (DSnoT's statistics);
- ``outputs``: moments of the owner module's output features, with their covariance (PCA's widths);
- ``mean_abs``: first moments of its input features, E|a| per input channel (PCA's connections);
- ``influence``: on each block of the model (not a target), the sum over tokens of the cosine between the
  block's input and output hidden states (ShortGPT's block influence is one minus its mean);
- ``routing``: on each fused experts module (not a target), per expert the tokens routed to it and REAP's sum
  of router weight x expert output norm (:func:`routing_hooks`).

Norms and Gram matrices are summed in float32 by default, as the authors' Wanda and SparseGPT accumulate them
(float64 on request or for float64 inputs); moments always in float64 (see :class:`Moments`).

Forward hooks observe the modules that own the targets: Linear (and subclasses), Conv1d/Conv2d (grouped and
depthwise ones too: their statistics are per group, (groups, columns), each group of output channels seeing only
its input channels; :func:`per_row` gives every output row its group's), Hugging Face Conv1D, and nn.MultiheadAttention, whose parent reads its weights directly: in_proj_weight sees
the query (self-attention: query, key and value one input; cross-attention: each third of it its own input, as
groups; q/k/v_proj_weight each their own input) and out_proj
the heads' concatenated outputs, recomputed in the hook with an identity projection; and nn.RNN/LSTM/GRU,
whose weights see each layer's input sequence and previous hidden states (:mod:`prunelab.calibration.rnn`). A
target whose inputs cannot be observed this way (transposed convolutions, other padding modes) is a ConfigError
naming it, so a method never silently scores weights without their statistics.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, PrunelabError, first_line
from ..inputs import call
from .rnn import is_rnn_weight, rnn_rows
from ..targets import Layout, experts_calibrate, first_not_finite, is_hf_conv1d


@dataclass
class Moments:
    """Streamed first and second moments of a layer's features (conv activations: channels are the features,
    every position of every sample one observation), always summed in float64: the covariance is taken as the
    difference ss - n mu mu^T, which cancels too much in float32."""

    n: int = 0
    s: Tensor | None = None     # sum x (d,)
    ss: Tensor | None = None    # sum x x^T (d, d), only when the covariance is asked for
    sabs: Tensor | None = None  # sum |x| (d,)

    def add(self, x: Tensor, second: bool, channels_first: bool = True) -> None:
        x = features(x.detach(), channels_first).double()
        if self.s is None:
            d = x.shape[1]
            self.s = torch.zeros(d, dtype=torch.float64, device=x.device)
            self.sabs = torch.zeros_like(self.s)
            if second:
                self.ss = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.sabs += x.abs().sum(0)
        if second:
            self.ss += x.T @ x

    def mean(self) -> Tensor:
        return self.s / max(self.n, 1)

    def mean_abs(self) -> Tensor:
        return self.sabs / max(self.n, 1)

    def covariance(self) -> Tensor:
        """Unbiased covariance of the centered features."""
        mu = self.mean()
        return (self.ss - self.n * torch.outer(mu, mu)) / max(self.n - 1, 1)


def features(t: Tensor, channels_first: bool = True) -> Tensor:
    """(observations, features): a conv activation (N, C, *spatial) with its channels moved last
    (``channels_first``), a linear layer's (..., features) with every leading position an observation."""
    if t.dim() > 2 and channels_first:
        return t.transpose(1, -1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1]) if t.dim() >= 2 else t.reshape(1, -1)


@dataclass
class InputStats:
    """Streamed statistics of one target, by kind: of its inputs as rows of its (in * kernel) columns (``rows``,
    ``sq``, ``gram``), and of its module's output and input features (``outputs``, ``inputs``)."""

    rows: int = 0
    sq: Tensor | None = None    # (columns,): sum of x^2 per column ("norms", and with "gram")
    gram: Tensor | None = None  # (columns, columns): X^T X ("gram")
    sum: Tensor | None = None   # (columns,): sum of x per column ("sums")
    outputs: Moments | None = None  # the owner module's output features, with covariance ("outputs")
    inputs: Moments | None = None   # its input features, first moments ("mean_abs")
    cos: Tensor | None = None       # (1,): a block's sum over tokens of cos(input, output) ("influence")
    routed: Tensor | None = None    # (experts,): tokens routed to each expert of an experts module ("routing")
    reap: Tensor | None = None      # (experts,): sum over them of router weight x ||expert output|| ("routing")

    def norms(self) -> Tensor:
        """||X_j||_2 per column."""
        return self.sq.sqrt()

    def mean(self) -> Tensor:
        """E[x_j] per column, in float64 ("sums")."""
        return self.sum.double() / max(self.rows, 1)

    def variance(self) -> Tensor:
        """E[x_j^2] - E[x_j]^2 per column (the population variance, as DSnoT's authors take it), in float64 from
        the streamed sums and clamped at zero ("sums")."""
        return (self.sq.double() / max(self.rows, 1) - self.mean().square()).clamp_min(0.0)

    def tensors(self) -> list[Tensor]:
        """Every accumulated sum, in a fixed order (summed across ranks by :mod:`.distributed`)."""
        out = [t for t in (self.sq, self.gram, self.sum, self.cos, self.routed, self.reap) if t is not None]
        for m in (self.outputs, self.inputs):
            if m is not None:
                out += [t for t in (m.s, m.ss, m.sabs) if t is not None]
        return out


def _rows(module: nn.Module, x: Tensor) -> Tensor:
    """The module's input as rows of its weight's (in * kernel) columns; a grouped (or depthwise) convolution's
    as (groups, rows, in / groups * kernel): each group of output channels sees only its group's inputs."""
    if isinstance(module, nn.Conv2d):
        x = F.pad(x, _pads(module))  # explicitly: "same" pads an even kernel unevenly, which unfold cannot
        cols = F.unfold(x, module.kernel_size, module.dilation, 0, module.stride)  # (N, C k k, L)
    elif isinstance(module, nn.Conv1d):
        cols = F.unfold(F.pad(x, _pads(module)).unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]),
                        0, (1, module.stride[0]))
    else:
        return x.reshape(-1, x.shape[-1])  # Linear, HF Conv1D: features last
    g = module.groups
    if g == 1:
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    n, c, length = cols.shape  # unfold orders columns (channel, kernel position): a group's channels are contiguous
    return cols.reshape(n, g, c // g, length).permute(1, 0, 3, 2).reshape(g, n * length, c // g)


def _pads(module: nn.Module) -> tuple[int, ...]:
    """F.pad's (last dim left, right, then the one before ...) of a zero-padded convolution, its ``padding``
    given as numbers, "valid" (none) or "same" (total dilation * (kernel - 1), the extra one on the right, as
    torch pads it)."""
    k, d = module.kernel_size, module.dilation
    if module.padding == "valid":
        per_dim = [(0, 0)] * len(k)
    elif module.padding == "same":
        per_dim = [(t // 2, t - t // 2) for t in (di * (ki - 1) for ki, di in zip(k, d))]
    else:
        per_dim = [(p, p) for p in module.padding]
    return tuple(v for pair in reversed(per_dim) for v in pair)


def per_row(stat: Tensor, rows: int) -> Tensor:
    """A column statistic for every output row of a weight: a plain layer's (columns,) as it is (it broadcasts);
    a grouped convolution's (groups, columns...) repeated for each group's rows, (rows, columns...)."""
    return stat if stat.dim() == 1 else stat.repeat_interleave(rows // stat.shape[0], dim=0)


def _observable(module: nn.Module, attr: str) -> bool:
    if attr != "weight" or isinstance(module, nn.modules.conv._ConvTransposeNd):
        return False
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.padding_mode == "zeros"  # numbers, "valid" or "same" (see _pads)
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


Rows = Callable[[nn.Module, tuple, dict, Any], Tensor]  # (module, args, kwargs, output) -> rows of the columns


def _layer_rows(module, args, kwargs, output) -> Tensor:
    return _rows(module, args[0])


def _mha_inputs(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor]:
    named = ("query", "key", "value")
    got = list(args[:3]) + [kwargs[k] for k in named[len(args[:3]):] if k in kwargs]
    if len(got) < 3:
        raise ConfigError("calibration could not read the query, key and value of an attention call")
    return got[0], got[1], got[2]


def _mha_rows(which: int | None) -> Rows:
    """Rows of nn.MultiheadAttention's projections: ``which`` 0/1/2 the query/key/value input (separate
    q/k/v_proj_weight), None the packed in_proj_weight: one input for all three in self-attention; otherwise
    (cross-attention) its query, key and value rows (the three thirds of in_proj_weight) each see their own
    input, as three groups (3, rows, embed) like a grouped convolution's, the shorter ones padded with zero
    rows, which add nothing to the sums."""
    def rows(module, args, kwargs, output):
        q, k, v = _mha_inputs(args, kwargs)
        if which is not None:
            x = (q, k, v)[which]
        elif q is k and k is v or (q.shape == k.shape == v.shape and torch.equal(q, k) and torch.equal(k, v)):
            x = q
        else:
            parts = [t.reshape(-1, t.shape[-1]) for t in (q, k, v)]
            n = max(t.shape[0] for t in parts)
            return torch.stack([F.pad(t, (0, 0, 0, n - t.shape[0])) for t in parts])
        return x.reshape(-1, x.shape[-1])
    return rows


_REENTERED: set[int] = set()


def _mha_out_rows(module, args, kwargs, output) -> Tensor:
    """The inputs of out_proj, which MultiheadAttention multiplies itself: the attention's output recomputed
    with an identity projection (the heads' concatenated outputs)."""
    e = module.out_proj.weight.shape[1]
    eye = torch.eye(e, dtype=module.out_proj.weight.dtype, device=module.out_proj.weight.device)
    _REENTERED.add(id(module))  # the recomputation calls the module, whose hook must stay silent
    try:
        out = torch.func.functional_call(module, {"out_proj.weight": eye, "out_proj.bias": torch.zeros_like(eye[0])},
                                         args, kwargs)
    finally:
        _REENTERED.discard(id(module))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(-1, e)


def expert_call(args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(hidden_states, top_k_index, top_k_weights) of a fused experts module's call, positional or by keyword
    (None where the call did not give one: a layout that routes another way, Llama-4's pre-sorted tokens)."""
    names = ("hidden_states", "top_k_index", "top_k_weights")
    got = [args[i] if len(args) > i else kwargs.get(k) for i, k in enumerate(names)]
    return tuple(t if isinstance(t, Tensor) else None for t in got)


def expert_rows(attr: str) -> Rows:
    """Rows of a fused experts module's ``gate_up_proj`` (the hidden states of the tokens routed to each expert)
    or ``down_proj`` (each expert's act(gate) * up on them), as (experts, rows, columns) like a grouped
    convolution's groups, zero-padded to the busiest expert (zeros add nothing to norms or Gram matrices)."""
    def rows(module, args, kwargs, output) -> Tensor:
        x, index, _ = expert_call(args, kwargs)  # the standard layout's call (targets.experts_calibrate)
        n = int(module.gate_up_proj.shape[0])
        chosen = [(index == e).any(-1).nonzero().flatten() for e in range(n)]
        cols = module.gate_up_proj.shape[-1] if attr == "gate_up_proj" else module.down_proj.shape[-1]
        out = x.new_zeros(n, max(len(c) for c in chosen), cols)
        for e, tok in enumerate(chosen):
            if len(tok):
                xe = x[tok]
                if attr == "down_proj":
                    gate, up = F.linear(xe, module.gate_up_proj[e]).chunk(2, dim=-1)
                    xe = module.act_fn(gate) * up
                out[e, :len(tok)] = xe
        return out
    return rows


def owners(model: nn.Module, targets: Mapping[str, Tensor]) -> dict[str, tuple[nn.Module, Rows]]:
    """For each target, the module whose forward call shows its inputs and how to read them as rows of its
    columns; ConfigError naming the targets without one."""
    by_param = {id(p): (m, attr) for m in model.modules() for attr, p in m.named_parameters(recurse=False)}
    attention = {id(c): m for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    out, missing = {}, []
    for name, p in targets.items():
        module, attr = by_param.get(id(p), (None, None))
        if isinstance(module, nn.MultiheadAttention) and attr in ("in_proj_weight", "q_proj_weight",
                                                                  "k_proj_weight", "v_proj_weight"):
            out[name] = module, _mha_rows(None if attr == "in_proj_weight" else "qkv".index(attr[0]))
        elif id(module) in attention and attr == "weight" and module is attention[id(module)].out_proj:
            out[name] = attention[id(module)], _mha_out_rows  # out_proj is never called: its parent reads it
        elif is_rnn_weight(module, attr):
            out[name] = module, rnn_rows(attr)
        elif attr in ("gate_up_proj", "down_proj") and experts_calibrate(module):
            out[name] = module, expert_rows(attr)
        elif module is None or not _observable(module, attr):
            missing.append(name)
        else:
            out[name] = module, _layer_rows
    if missing:
        raise ConfigError(f"calibration cannot observe the inputs of {', '.join(missing[:3])}"
                          f"{' and more' if len(missing) > 3 else ''} (transposed convolutions, padding modes "
                          "other than zeros); "
                          "leave them out with targets.exclude")
    return out


def run_model(model: nn.Module, x: Any) -> Any:
    """``model`` called on calibration inputs; what it raises on them is the user's inputs' fault: ConfigError."""
    try:
        return call(model, x)
    except PrunelabError:  # a hook's own sentence
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"the model rejected the calibration inputs: {first_line(exc, 200)}") from None


@contextmanager
def hooked(model: nn.Module, hooks: Mapping[nn.Module, Callable]) -> Iterator[None]:
    """Within the block: ``hook(module, args, kwargs, output)`` on each module of ``hooks`` (silent while a hook
    recomputes its own module), ``model`` in eval mode, no gradients; all restored on exit."""
    def silent_when_reentered(fn):
        return lambda m, a, k, o: None if id(m) in _REENTERED else fn(m, a, k, o)
    handles = [m.register_forward_hook(silent_when_reentered(fn), with_kwargs=True) for m, fn in hooks.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was)


ROW_KINDS = frozenset({"norms", "gram", "sums"})
KINDS = ROW_KINDS | {"outputs", "mean_abs", "influence", "routing"}


def stat_hooks(mods: Mapping[str, tuple[nn.Module, Rows]], kinds: frozenset[str], precision: str = "float32"
               ) -> tuple[dict[nn.Module, Callable], dict[str, InputStats]]:
    """Forward hooks accumulating each target's :class:`InputStats` of ``kinds`` (from :func:`owners`), and the
    dict they fill. ``precision`` "float32": products and sums in float32 (float64 for float64 inputs), as the
    authors' Wanda and SparseGPT accumulate; "float64": both in float64."""
    stats: dict[str, InputStats] = {}
    rows_wanted, gram, sums = bool(kinds & ROW_KINDS), "gram" in kinds, "sums" in kinds

    def hook(name, read_rows):
        def fn(module, args, kwargs, output):
            s = stats.get(name)
            if s is None:
                s = stats[name] = InputStats(outputs=Moments() if "outputs" in kinds else None,
                                             inputs=Moments() if "mean_abs" in kinds else None)
            conv = isinstance(module, nn.modules.conv._ConvNd)  # channels first; linear layers: features last
            if s.outputs is not None:
                if not isinstance(output, Tensor):
                    raise ConfigError(f"the output of {name}'s layer is not one tensor: its output moments "
                                      "cannot be measured")
                s.outputs.add(output, second=True, channels_first=conv)
            if s.inputs is not None:
                s.inputs.add(args[0], second=False, channels_first=conv)
            if not rows_wanted:
                return
            x = read_rows(module, args, kwargs, output).detach()
            x = x.double() if precision == "float64" or x.dtype == torch.float64 else x.float()
            lead = tuple(x.shape[:-2])  # (groups,) for a grouped convolution, else ()
            if s.sq is None:
                s.sq = torch.zeros(*lead, x.shape[-1], dtype=x.dtype, device=x.device)
                if gram:
                    s.gram = torch.zeros(*lead, x.shape[-1], x.shape[-1], dtype=x.dtype, device=x.device)
                if sums:  # float64: a mean subtracted from E[x^2] below must not carry float32's rounding
                    s.sum = torch.zeros(*lead, x.shape[-1], dtype=torch.float64, device=x.device)
            s.rows += x.shape[-2]
            s.sq += x.square().sum(-2)
            if sums:
                s.sum += x.sum(-2, dtype=torch.float64)
            if gram:
                s.gram.add_(x.transpose(-1, -2) @ x) if lead else s.gram.addmm_(x.T, x)
        return fn

    by_module: dict[nn.Module, list] = {}  # an attention module shows the inputs of several targets
    for name, (module, read_rows) in mods.items():
        by_module.setdefault(module, []).append(hook(name, read_rows))
    return {m: _each(fns) for m, fns in by_module.items()}, stats


def check_reached(names: Iterable[str], stats: Mapping[str, Any]) -> None:
    """ConfigError when a target's inputs were never seen, or held NaN or infinite values (masks chosen from
    them would be arbitrary: a NaN sorts anywhere)."""
    unseen = [n for n in names if n not in stats]
    if unseen:
        globs = sorted({re.sub(r"\.\d+(?=\.)", ".*", n) for n in unseen})  # layer indices as wildcards
        more = f" and {len(unseen) - 3} more" if len(unseen) > 3 else ""
        raise ConfigError(f"calibration never reached {', '.join(unseen[:3])}{more}: the model never called their "
                          "modules on the calibration inputs (a branch its forward skips, or a weight its parent's "
                          "forward reads itself, as in F.linear(x, self.qkv.weight), which no module hook sees); "
                          f"leave them out with targets exclude {globs[:3]}")
    bad = first_not_finite({n: list(stats[n].tensors()) for n in names if isinstance(stats[n], InputStats)})
    if bad is not None:
        raise ConfigError(f"the calibration inputs reaching {bad} contain NaN or infinite values (in the data, "
                          "or made by an earlier layer): clean the calibration data, or exclude the layer")


def _each(fns: list) -> Callable:
    def fn(*hook_args):
        for f in fns:
            f(*hook_args)
    return fn


def column_view(layout: Layout, t: Tensor) -> Tensor:
    """A weight (or its scores, its mask) as the (out, in * kernel) matrix whose columns match the stats'."""
    c = layout.canonical(t)
    return c.reshape(c.shape[0], -1)
