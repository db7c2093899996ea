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

llama.cpp, where a checkout (``--llama-cpp`` or ``LLAMA_CPP``, for its converter) and llama-cpp-python are
installed: each model written by ``prunelab.export.gguf`` (llama.cpp's ``convert_hf_to_gguf.py``) in f16 and
q8_0, and Q4_K_M by llama.cpp's own quantizer (``llama_model_quantize``); bytes of the file, bits per weight, and
greedy decode tokens/s at batch 1 from the same prompt (best of repeats, interleaved). ``shrunk r256`` is the
shrunk model with ``round_to: 256``: llama.cpp's k-quants work in blocks of 256, and a row width that is not a
multiple falls back to a larger format.

    python benchmarks/deploy_lm.py [--layers 4 --hidden 512] [--repeats 3] [--threads 1] [--llama-cpp DIR]
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
    out = {"dense": dense}
    for name, round_to in (("shrunk", 1), ("shrunk r256", 256)):
        torch.manual_seed(0)
        model = make()
        p = Pruner(model, {"name": "transformer_units", "units": ["mlp", "heads"], "criterion": "magnitude",
                           "round_to": round_to}, sparsity=0.5, schedule="manual", example_inputs=ids)
        p.prune(0.5)
        out[name] = shrink(model, p.masks, ids, graph=p.structure)[0].eval()
    torch.manual_seed(0)
    sparse = make()
    Pruner(sparse, "magnitude", sparsity=0.5)
    out["sparse"] = sparse
    return out


def gguf_files(models: dict, folder, converter) -> dict:
    """{(name, type): GGUF path} of each model in f16 and q8_0 (llama.cpp's converter) and Q4_K_M (its quantizer)."""
    import llama_cpp

    from prunelab.data.text import byte_tokenizer
    from prunelab.export.gguf import to_gguf
    from prunelab.models.hf import save_pretrained

    out = {}
    for name, m in models.items():
        hf = folder / name.replace(" ", "_")
        save_pretrained(m, hf, tokenizer=byte_tokenizer())  # ids above 255 become padding tokens: decode by ids
        for t in ("f16", "q8_0"):
            out[(name, t)] = to_gguf(hf, folder / f"{hf.name}-{t}.gguf", converter, t)
        q = folder / f"{hf.name}-q4_k_m.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.nthread = 1
        if llama_cpp.llama_model_quantize(str(out[(name, "f16")]).encode(), str(q).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {name} to Q4_K_M")
        out[(name, "Q4_K_M")] = q
    return out


def llama_cpp_rates(files: dict, threads: int, new: int, repeats: int) -> dict:
    """{key: best tokens/s} of greedy decode at batch 1 in llama.cpp (16 prompt tokens, ``new`` generated)."""
    import time

    from llama_cpp import Llama

    llms = {k: Llama(str(f), n_ctx=64, n_threads=threads, n_batch=16, verbose=False) for k, f in files.items()}
    prompt = torch.randint(0, 32000, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    rates: dict = {k: 0.0 for k in llms}
    for _ in range(repeats + 1):  # the first round warms up
        for k, llm in llms.items():
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(new):
                tok = llm.sample(top_k=1, temp=0.0)
                llm.eval([tok])
            rates[k] = max(rates[k], new / (time.perf_counter() - t0)) if _ else 0.0
    return rates


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
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP"), help="a llama.cpp checkout (its converter)")
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
    try:
        import llama_cpp  # noqa: F401

        from prunelab.export.gguf import find_converter
        converter = find_converter(a.llama_cpp)
    except Exception as exc:  # noqa: BLE001 (the reason is printed)
        print(f"\nllama.cpp: not measured ({str(exc).splitlines()[0][:120]})")
        return
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = {name: m for (name, kind), m in models.items() if kind == "fp32"}
        files = gguf_files(fp32, Path(tmp), converter)
        rates_c = llama_cpp_rates(files, a.threads, a.new, a.repeats)
        n = {name: sum(p.numel() for p in m.parameters()) for name, m in fp32.items()}
        base = rates_c[("dense", "f16")]
        print(f"\n## llama.cpp (llama-cpp-python {llama_cpp.__version__}), batch 1, {a.threads} thread(s)\n")
        print("| model | GGUF type | file MB | bits per parameter | decode tok/s (best of repeats) | "
              "speedup over dense in the same type | over dense f16 |")
        print("|---|---|---|---|---|---|---|")
        for (name, t), f in files.items():
            size = f.stat().st_size
            r = rates_c[(name, t)]
            print(f"| {name} | {t} | {size / 1e6:.1f} | {8 * size / n[name]:.2f} | {r:.0f} | "
                  f"{r / rates_c[('dense', t)]:.2f}x | {r / base:.2f}x |")


if __name__ == "__main__":
    main()
