"""What each weight of a recurrent layer (nn.RNN, nn.LSTM, nn.GRU) multiplies, for calibration.

``weight_ih_l{k}[_reverse]`` multiplies layer k's input sequence: the module's input for k = 0, the outputs of
layer k - 1 (both directions) above it. ``weight_hh_l{k}[_reverse]`` multiplies the direction's previous hidden
state h_{t-1}: the initial state at the first step (the one given to the call, else zeros), then the
direction's own outputs, shifted by one step (backwards in time for the reverse direction).

The module returns only its last layer's outputs, so the outputs of the layers below are recomputed here, one
layer at a time, by calling a one-layer module of the same kind on that layer's weights
(``torch.func.functional_call``: nothing is copied or written). Written by hand because torch exposes no
per-layer outputs of a stacked RNN; packed sequences and LSTMs with ``proj_size`` are refused in one sentence.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError

_NAME = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?$")


def is_rnn_weight(module: nn.Module, attr: str) -> bool:
    return isinstance(module, nn.RNNBase) and _NAME.match(attr or "") is not None


def _layer_outputs(module: nn.RNNBase, x: Tensor, h0, layer: int) -> Tensor:
    """Outputs (T, N, D * H) of layer ``layer`` on its input ``x`` (T, N, F), from its own weights."""
    one = type(module)(x.shape[-1], module.hidden_size, num_layers=1, bias=module.bias,
                       bidirectional=module.bidirectional, **({"nonlinearity": module.nonlinearity}
                                                              if isinstance(module, nn.RNN) else {}))
    params = {}
    for suffix in ("", "_reverse") if module.bidirectional else ("",):
        for kind in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if module.bias else ()):
            params[f"{kind}_l0{suffix}"] = getattr(module, f"{kind}_l{layer}{suffix}")
    one = one.to(device=x.device, dtype=x.dtype)
    return torch.func.functional_call(one, params, (x,) if h0 is None else (x, h0))[0]


def _initial(module: nn.RNNBase, args: tuple, kwargs: dict, layer: int, unbatched: bool):
    """Layer ``layer``'s initial state(s) as the one-layer module takes them (batched), or None for zeros."""
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if hx is None:
        return None
    d = 2 if module.bidirectional else 1

    def cut(h):
        h = h[layer * d:(layer + 1) * d]
        return h.unsqueeze(1) if unbatched else h
    return tuple(cut(h) for h in hx) if isinstance(hx, tuple) else cut(hx)


def rnn_rows(attr: str) -> Callable:
    """A row reader (module, args, kwargs, output) -> rows for the recurrent weight ``attr``."""
    kind, layer, reverse = _NAME.match(attr).groups()
    layer = int(layer)

    def rows(module, args, kwargs, output) -> Tensor:
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor):
            raise ConfigError("calibration of recurrent weights needs padded tensors, not packed sequences")
        if getattr(module, "proj_size", 0):
            raise ConfigError("calibration of an LSTM with proj_size is not supported; exclude its weights")
        unbatched = x.dim() == 2
        x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if module.batch_first else x)  # (T, N, F)
        for k in range(layer):  # the inputs of layer `layer`: the outputs of the layers below
            x = _layer_outputs(module, x, _initial(module, args, kwargs, k, unbatched), k)
        if kind == "ih":
            return x.reshape(-1, x.shape[-1])
        out = _layer_outputs(module, x, _initial(module, args, kwargs, layer, unbatched), layer)
        h = module.hidden_size
        mine = out[..., h:] if reverse else out[..., :h]  # (T, N, H) of this direction
        start = _initial(module, args, kwargs, layer, unbatched)
        start = start[0] if isinstance(start, tuple) else start  # an LSTM's (h0, c0): h0
        first = torch.zeros_like(mine[0]) if start is None else start[1 if reverse else 0].reshape(mine[0].shape)
        prev = torch.cat([mine[1:], first[None]]) if reverse else torch.cat([first[None], mine[:-1]])
        return prev.reshape(-1, h)
    return rows
