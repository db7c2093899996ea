"""Analysis: parameter and FLOP counts, per-layer tables."""
from .flops import count_flops, count_params

__all__ = ["count_flops", "count_params"]
