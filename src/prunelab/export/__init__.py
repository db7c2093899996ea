"""File formats of pruned models: the compact sparse file, the shrunk-model file, ONNX, CSR inference (and
``shrink`` itself, re-exported where users import it)."""
from .compact import compact_bytes, decode_tensor, encode_tensor, load_compact, save_compact
from .onnx import export_onnx
from .shrink import ShrinkError, load_shrunk, save_shrunk, shrink
from .sparse_linear import SparseLinear, sparsify_linear

__all__ = ["compact_bytes", "decode_tensor", "encode_tensor", "export_onnx", "load_compact", "save_compact", "ShrinkError",
           "load_shrunk", "save_shrunk", "shrink", "SparseLinear", "sparsify_linear"]
