"""Attention heads of ``nn.MultiheadAttention`` as a unit of pruning, and the smaller module they shrink into.

A head h of an ``nn.MultiheadAttention`` with model width E and H heads of size d = E / H owns rows
[h d, (h+1) d) of each of the q, k and v blocks of ``in_proj_weight`` and columns [h d, (h+1) d) of
``out_proj.weight``. With its out_proj columns at zero a head adds nothing to the output, whatever its q, k, v
weights and biases: the masked model computes exactly what the model without that head computes.

``nn.MultiheadAttention`` cannot hold fewer heads than E / d (its inner width is the model width), so a shrunk
attention is a :class:`HeadPrunedAttention`: the same call signature and results, with ``num_heads`` kept heads
of the same size, q, k, v of width ``num_heads * d`` and ``out_proj`` from that width back to E. Written here
because neither torch nor Torch-Pruning has such a module (Torch-Pruning prunes the model width instead).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AttentionHeads:
    """The heads of one ``nn.MultiheadAttention`` whose in_proj and out_proj weights are both prunable targets."""

    module: str       # the attention's module name
    in_proj: str      # its in_proj_weight's target name
    out_proj: str     # its out_proj.weight's target name
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def rows(self, h: int) -> Tensor:
        """in_proj rows of head ``h`` (its q, k and v rows)."""
        part = torch.arange(h * self.head_dim, (h + 1) * self.head_dim)
        return torch.cat([part + b * self.width for b in range(3)])

    def columns(self, h: int) -> Tensor:
        """out_proj columns of head ``h``."""
        return torch.arange(h * self.head_dim, (h + 1) * self.head_dim)

    def kept(self, masks) -> Tensor:
        """(heads,) bool: heads whose out_proj columns are not all pruned."""
        cols = masks[self.out_proj].any(0)
        return cols.reshape(self.heads, self.head_dim).any(1)


def attention_heads(model: nn.Module, targets) -> list[AttentionHeads]:
    """Every self-attention of the model whose heads can go: q, k, v in one ``in_proj_weight``, no extra key or
    value biases, and both projections among ``targets``."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.MultiheadAttention) or not m._qkv_same_embed_dim:
            continue
        if m.bias_k is not None or m.add_zero_attn:
            continue
        in_proj, out_proj = f"{name}.in_proj_weight", f"{name}.out_proj.weight"
        if in_proj in targets and out_proj in targets:
            out.append(AttentionHeads(name, in_proj, out_proj, m.num_heads, m.head_dim))
    return out


class HeadPrunedAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` each, inner width smaller than
    ``embed_dim``; self- and cross-attention, ``attn_mask``, ``key_padding_mask``, ``is_causal`` and
    ``need_weights`` as in torch's module."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self._qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused fast path
        self.heads_kept: list[int] = list(range(num_heads))  # which of the original heads these are

    @classmethod
    def from_attention(cls, m: nn.MultiheadAttention, heads: Tensor) -> "HeadPrunedAttention":
        """The kept ``heads`` (indices) of ``m``, with their weights."""
        spec = AttentionHeads("", "", "", m.num_heads, m.head_dim)
        small = cls(m.embed_dim, len(heads), m.head_dim, m.in_proj_bias is not None, m.batch_first, m.dropout)
        rows = torch.cat([spec.rows(int(h)) for h in heads]).reshape(len(heads), 3, -1).transpose(0, 1).reshape(-1)
        cols = torch.cat([spec.columns(int(h)) for h in heads])
        with torch.no_grad():
            small.in_proj_weight.copy_(m.in_proj_weight[rows])
            if m.in_proj_bias is not None:
                small.in_proj_bias.copy_(m.in_proj_bias[rows])
                small.out_proj.bias.copy_(m.out_proj.bias)
            small.out_proj.weight.copy_(m.out_proj.weight[:, cols])
        small.heads_kept = [int(h) for h in heads]
        w = m.in_proj_weight
        if (small.in_proj_weight.device, small.in_proj_weight.dtype) != (w.device, w.dtype):
            small = small.to(w.device, w.dtype)
        return small

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, s, _ = query.shape
        w = self.in_proj_weight.chunk(3)
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(t, wi, bi).reshape(b, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
                   for t, wi, bi in zip((query, key, value), w, bias))
        if attn_mask is not None and attn_mask.dim() == 3:  # per (batch, original head): the kept heads' masks
            attn_mask = attn_mask.reshape(b, -1, s, k.shape[2])[:, self.heads_kept]
        mask = _merge_masks(attn_mask, key_padding_mask, q.dtype, b, s, k.shape[2], is_causal)
        scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(-1)
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(b, s, -1)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


def _merge_masks(attn_mask, key_padding_mask, dtype, b, s, t, is_causal) -> Tensor | None:
    """One additive mask broadcastable to (b, heads, s, t) from torch's boolean (True = masked) or float masks."""
    def additive(m: Tensor) -> Tensor:
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
    elif is_causal:
        mask = additive(torch.ones(s, t, dtype=torch.bool).triu(1))
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).reshape(b, 1, 1, t)
        mask = pad if mask is None else mask + pad
    return mask
