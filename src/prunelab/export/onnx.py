"""ONNX export of any model with the inputs it takes, checked under onnxruntime before anything is written."""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ConfigError
from ..inputs import Inputs, call, map_tensors, random_like, tensors
from ..io import atomic_write_bytes


def export_onnx(model: torch.nn.Module, example_inputs: Inputs, path: str | Path, atol: float = 1e-4) -> float:
    """Export ``model`` to ONNX with a dynamic batch dimension and check it under onnxruntime; returns the max
    abs difference from PyTorch's outputs over every output tensor.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs (token ids
    included), batch first; the check runs on random inputs like them (integers over the example's range).
    ConfigError when the difference exceeds ``atol``, when the model cannot be exported, or when onnx is not
    installed; nothing is written then. torch.export's exporter goes first; where it fails (a detector's
    data-dependent shapes, a cache object), the classic TorchScript exporter is tried with the same dynamic
    batch, and a failure of both names both causes (the innermost error of each, without terminal colours).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install 'prunelab[onnx]'") from None
    model = model.eval()
    x = random_like(example_inputs, torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = map_tensors(x, lambda t: {0: batch} if t.dim() > 0 else None)
    args, kwargs = ((), dict(x)) if isinstance(x, Mapping) else (tuple(x) if isinstance(x, (tuple, list)) else (x,), {})
    shapes = dict(dims) if isinstance(x, Mapping) else (tuple(dims) if isinstance(x, (tuple, list)) else (dims,))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buf = io.BytesIO()
    try:
        prog = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, dynamic_shapes=shapes,
                                 verbose=False, report=False)
        prog.save(buf)
    except Exception as exc:  # exporter failures come from the user's model; their causes are named below
        first = _cause(exc)
        buf = io.BytesIO()
        try:
            _classic(model, x, buf)
        except Exception as again:
            raise ConfigError(f"the model could not be exported to ONNX: torch.export: {first}; the classic "
                              f"exporter: {_cause(again)}") from None
    data = buf.getvalue()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = random_like(example_inputs, torch.Generator().manual_seed(1))  # not the traced inputs: a value the
    # exporter froze into a constant (a branch taken, a Python number) shows as a difference
    with torch.no_grad():
        want = [t.numpy() for t in tensors(call(model, x))]
    feed = dict(zip((i.name for i in sess.get_inputs()), (t.numpy() for t in tensors(x))))
    got = sess.run(None, feed)
    if len(got) != len(want):
        raise ConfigError(f"the ONNX model has {len(got)} outputs, the model {len(want)}; not written")
    diff = max((float(abs(g - w).max()) for g, w in zip(got, want)), default=0.0)
    if not diff <= atol:
        raise ConfigError(f"the ONNX model's outputs differ from PyTorch's by {diff:.3g} (> {atol:g}); not written")
    atomic_write_bytes(path, data)
    return diff


def _cause(exc: BaseException) -> str:
    """The innermost error of an exception chain, its first meaningful line, without terminal colour codes
    (torch.export's own message is a banner of steps and hints)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    text = next((line for line in lines if line), "") or type(exc).__name__
    return f"{type(exc).__name__}: {text[:240]}"


def _classic(model: torch.nn.Module, x: Inputs, buf: io.BytesIO) -> None:
    """The TorchScript-based exporter (``dynamo=False``), batch dynamic on every input and output."""
    if isinstance(x, Mapping):
        names, args = list(x), (dict(x),)
    else:
        values = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        names, args = [f"input_{i}" for i in range(len(values))], values
    with torch.no_grad():
        n_out = len(tensors(call(model, x)))
    outputs = [f"output_{i}" for i in range(n_out)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the branch it records: the check below decides
        torch.onnx.export(model, args, buf, input_names=names, output_names=outputs, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in names + outputs})
