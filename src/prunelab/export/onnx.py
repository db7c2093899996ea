"""ONNX export of any model with the inputs it takes, checked under onnxruntime before anything is written."""
from __future__ import annotations

import io
import logging
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
    installed; nothing is written then.
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
    except Exception as exc:  # exporter failures come from the user's model; name the cause in one line
        raise ConfigError(f"the model could not be exported to ONNX: {str(exc).splitlines()[0][:300]}") from None
    data = buf.getvalue()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
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
