"""Export of pruned models: a compact file that stores only what the masks keep."""
from .compact import compact_bytes, decode_tensor, encode_tensor, load_compact, save_compact

__all__ = ["compact_bytes", "decode_tensor", "encode_tensor", "load_compact", "save_compact"]
