"""A pruned language model deployed: dense / shrunk / sparse x fp32 / int8 / int4, decode speed and weight bytes.

A LLaMA-layout model (``--layers`` x ``--hidden``, MLP 2.75x, 64-wide heads, vocabulary 32000; random weights:
speed and size do not depend on their values) three ways:

- ``dense``: as built;
- ``shrunk``: half the MLP channels and half the key-value groups (``transformer_units``, magnitude), then
  ``prunelab.export.shrink``: the same transformers class with a smaller config;
- ``sparse``: 50 % of every Linear's weights by magnitude (Wanda's and SparseGPT's usual target), zeros in place.

Each in float32 and quantized weight-only by torchao (``Int8WeightOnlyConfig``; int4 per group of 32,
``IntxWeightOnlyConfig``), as ``from_pretrained(..., quantization_config=TorchAoConfig(...))`` does. Printed:
the bytes of the weights as stored (a quantized tensor's own), and greedy decode tokens per second at batch 1
(16-token prompt, ``--new`` new tokens with the key-value cache, each after a warm-up call, the best of
``--repeats``, models interleaved),
against the dense float32 model in the same run. Where torchao is not installed only float32 runs.

    python benchmarks/deploy_lm.py [--layers 4 --hidden 512] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch

from moe import _decode as decode  # greedy tokens/s at batch 1 (the script's folder is on sys.path)


def build(a):
    import transformers

    from prunelab import Pruner
    from prunelab.export import shrink

    cfg = transformers.LlamaConfig(num_hidden_layers=a.layers, hidden_size=a.hidden,
                                   intermediate_size=a.hidden * 11 // 4, num_attention_heads=a.hidden // 64,
                                   num_key_value_heads=max(2, a.hidden // 256), vocab_size=32000,
                                   max_position_embeddings=256)
    make = lambda: transformers.LlamaForCausalLM(cfg).eval()  # noqa: E731
    torch.manual_seed(0)
    dense = make()
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 32000, (1, 16))
    p = Pruner(model, {"name": "transformer_units", "units": ["mlp", "heads"], "criterion": "magnitude"},
               sparsity=0.5, schedule="manual", example_inputs=ids)
    p.prune(0.5)
    small, _ = shrink(model, p.masks, ids, graph=p.structure)
    torch.manual_seed(0)
    sparse = make()
    Pruner(sparse, "magnitude", sparsity=0.5)
    return {"dense": dense, "shrunk": small.eval(), "sparse": sparse}


def quantized(model, kind: str):
    import copy

    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    m = copy.deepcopy(model)
    quantize_(m, Int8WeightOnlyConfig() if kind == "int8" else
              IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    return m


def weight_bytes(model) -> int:
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        inner = [getattr(t, a) for a in getattr(t, "__tensor_flatten__", lambda: ([], None))()[0]]
        total += sum(x.numel() * x.element_size() for x in inner) if inner else t.numel() * t.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    models = {}
    for name, m in build(a).items():
        m.generation_config.use_cache = True
        models[(name, "fp32")] = m
        try:
            for kind in ("int8", "int4"):
                models[(name, kind)] = quantized(m, kind)
        except ImportError:
            pass
    rates: dict = {k: [] for k in models}
    for _ in range(a.repeats):
        for k, m in models.items():  # interleaved
            rates[k].append(decode(m, 1, a.new))
    base_r, base_b = max(rates[("dense", "fp32")]), weight_bytes(models[("dense", "fp32")])
    print(f"# LLaMA {a.layers} x {a.hidden} (vocabulary 32000) decode, batch 1, {a.threads} thread(s), torch "
          f"{torch.__version__}; {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores\n")
    print("| model | weights | weight MB | x dense fp32 | decode tok/s (best of repeats) | speedup over dense fp32 |")
    print("|---|---|---|---|---|---|")
    for (name, kind), rs in rates.items():
        b = weight_bytes(models[(name, kind)])
        print(f"| {name} | {kind} | {b / 1e6:.1f} | {b / base_b:.2f} | {max(rs):.0f} | {max(rs) / base_r:.2f}x |")


if __name__ == "__main__":
    main()
