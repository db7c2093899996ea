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


def _masked_linears(model: nn.Module, masks):
    """(copy of ``model`` in eval mode, [(layer name, Linear, mask)]): every masked Linear of the copy, its mask
    applied, that can be swapped for another module (attention calls F.multi_head_attention_forward with
    out_proj.weight: a swap would not be seen, so those keep their module)."""
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    read_directly = {id(c) for m in out.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    found = []
    for name, m in masks.items():
        layer = name.rsplit(".", 1)[0]
        mod = modules.get(layer)
        if not isinstance(mod, nn.Linear) or not name.endswith("weight"):
            continue
        with torch.no_grad():
            mod.weight.mul_(m.to(mod.weight.dtype))
        if id(mod) not in read_directly:
            found.append((layer, mod, m))
    return out, found


def _swap(model: nn.Module, layer: str, new: nn.Module) -> None:
    parent, _, child = layer.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def sparsify_linear(model: nn.Module, masks, min_sparsity: float = 0.0) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every masked Linear at least ``min_sparsity`` sparse replaced by SparseLinear;
    returns (model, names of the replaced layers)."""
    out, found = _masked_linears(model, masks)
    replaced = []
    for layer, mod, m in found:
        if 1 - m.float().mean().item() >= min_sparsity:
            _swap(out, layer, SparseLinear(mod))
            replaced.append(layer)
    return out, replaced


class ScipyLinear(nn.Module):
    """A linear layer multiplied by SciPy's CSR kernel (inference only): at batch 1 it is often several times
    faster than torch's CSR matmul on CPU, which pays a fixed cost per call."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        import scipy.sparse

        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.matrix = scipy.sparse.csr_matrix(linear.weight.detach().cpu().numpy())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    @property
    def weight(self) -> Tensor:
        return torch.from_numpy(self.matrix.toarray())

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).detach().cpu().numpy()
        out = torch.from_numpy((self.matrix @ flat.T).T.copy()).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


KERNELS = {"dense": lambda linear: linear, "csr": SparseLinear, "scipy": ScipyLinear}


def _median_us(layer: nn.Module, x: Tensor, repeats: int) -> float:
    import statistics
    import time

    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            layer(x)
            if i >= 2:  # two warm-up calls
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def choose_linear_kernels(model: nn.Module, masks, batch: int, repeats: int = 10) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose masked Linear layers each use the kernel that is fastest on this machine for
    ``batch`` rows: dense (the masked weight as it is), torch CSR or SciPy CSR, timed interleaved on random
    inputs (median of ``repeats`` calls); returns (model, {layer: {"kernel", "us": {kernel: microseconds},
    "sparsity"}}). Dense is kept whenever a sparse kernel is not faster, so the result is never slower than the
    dense layer by more than the timing noise. Layers whose parent reads their weight stay dense."""
    out, found = _masked_linears(model, masks)
    choices = {}
    for layer, mod, m in found:
        x = torch.randn(batch, mod.in_features, dtype=mod.weight.dtype)
        built = {k: make(mod) for k, make in KERNELS.items()}
        us = {k: float("inf") for k in built}
        for _ in range(2):  # interleaved rounds: a load change hits every kernel alike
            for k, layer_k in built.items():
                us[k] = min(us[k], _median_us(layer_k, x, repeats))
        best = min(us, key=lambda k: (us[k], k != "dense"))
        choices[layer] = {"kernel": best, "us": {k: round(v, 1) for k, v in us.items()},
                          "sparsity": 1 - m.float().mean().item()}
        if best != "dense":
            _swap(out, layer, built[best])
    return out, choices
