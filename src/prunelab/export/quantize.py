"""Prune, then quantize: a Hugging Face folder written again with torchao's weight-only int8 or int4 weights.

transformers quantizes a folder as it loads it (``from_pretrained(..., quantization_config=TorchAoConfig(...))``)
and saves the quantized tensors in safetensors, which ``from_pretrained`` reads back with torchao installed (no
pickle: torchao's tensors are rebuilt from the file's metadata). prunelab only chooses the configurations and
checks the result before the folder is kept: every weight pruned in the float folder is exactly zero in the
quantized one (symmetric quantization maps 0 to 0), so the zeros are still the pruning's.

``int8``: ``Int8WeightOnlyConfig`` (per output channel). ``int4``: ``IntxWeightOnlyConfig(torch.int4,
PerGroup(32))``, symmetric; torchao's CPU layout stores each 4-bit value in a byte, so its file is no smaller than
int8's (measured in ``benchmarks/deploy_lm.py``; llama.cpp's Q4 formats pack them: ``--format gguf``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

KINDS = ("int8", "int4")


def torchao_config(kind: str) -> Any:
    """The torchao configuration of ``kind``; ConfigError naming the extra when torchao is missing."""
    if kind not in KINDS:
        raise ConfigError(f"--quantize is one of {', '.join(KINDS)}, got {kind!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        raise ConfigError("--quantize uses torchao: pip install 'prunelab[quantize]'") from None
    if kind == "int8":
        return Int8WeightOnlyConfig()
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))


def quantize_folder(src: str | Path, dst: str | Path, kind: str, force: bool = False, tokenizer: Any = None) -> Path:
    """Write the float Hugging Face folder ``src`` to ``dst`` quantized (``kind``: int8 | int4), with ``tokenizer``;
    ConfigError, and nothing at ``dst``, when a weight that was zero is not zero after quantization or the
    model cannot be quantized (a width the int4 groups do not divide)."""
    import transformers

    from ..models.hf import save_pretrained

    config = transformers.TorchAoConfig(torchao_config(kind))
    dense = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    zeros = {n: p.detach() == 0 for n, p in dense.named_parameters() if p.dim() == 2 and bool((p == 0).any())}
    del dense
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32,
                                                                 quantization_config=config)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"torchao could not quantize this model to {kind}: {str(exc).splitlines()[0][:200]}") \
            from None
    for name, p in model.named_parameters():
        if name in zeros and hasattr(p, "dequantize") and bool(p.dequantize()[zeros[name]].any()):
            raise ConfigError(f"{kind} quantization made pruned weights of {name} nonzero: the folder was not written")
    return save_pretrained(model, dst, force=force, tokenizer=tokenizer)
