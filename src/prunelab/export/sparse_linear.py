"""Sparse inference for linear layers with unstructured masks, through torch's CSR matrix multiply.

``sparsify_linear(model, masks)`` returns a copy of ``model`` whose masked ``nn.Linear`` layers hold their
weight as a ``torch.sparse_csr`` tensor and compute ``x @ W^T + b`` with ``torch.sparse.mm`` (W @ x^T):
outputs equal the dense layer's up to float rounding. It only pays when the weight is very sparse and the
batch small (see ``prunelab bench``'s diagnosis); conv layers are left dense (no CPU sparse convolution in
torch), and so are Linear layers whose weight their parent reads directly instead of calling them
(``nn.MultiheadAttention``'s ``out_proj``): their masks are applied, their modules kept.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn


class SparseLinear(nn.Module):
    """A linear layer whose weight is stored and multiplied in CSR form (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and outputs are tested
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    @property
    def weight(self) -> Tensor:
        """The weight as a dense tensor, for parents that read it instead of calling the layer (e.g. the fused
        fast path of ``nn.TransformerEncoderLayer``); built on each access, never stored."""
        return self.weight_csr.to_dense()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight_csr, flat.T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight_csr.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


def sparsify_linear(model: nn.Module, masks, min_sparsity: float = 0.0) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every masked Linear at least ``min_sparsity`` sparse replaced by SparseLinear;
    returns (model, names of the replaced layers)."""
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    # attention calls F.multi_head_attention_forward with out_proj.weight: a module swap would not be seen
    read_directly = {id(c) for m in out.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    replaced = []
    for name, m in masks.items():
        layer = name.rsplit(".", 1)[0]
        mod = modules.get(layer)
        if not isinstance(mod, nn.Linear) or not name.endswith("weight"):
            continue
        with torch.no_grad():
            mod.weight.mul_(m.to(mod.weight.dtype))
        if 1 - m.float().mean().item() < min_sparsity or id(mod) in read_directly:
            continue
        parent, _, child = layer.rpartition(".")
        setattr(modules[parent] if parent else out, child, SparseLinear(mod))
        replaced.append(layer)
    return out, replaced
