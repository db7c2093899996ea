"""Artifacts of a finished run, and an honest measurement of what they save.

``export_run(run_dir, fmt, out)`` writes one artifact of the run's final pruned model:
  ``dense``   plain safetensors weights with the zeros in place; state_dict keys unchanged, loadable with
              ``safetensors.torch.load_model(model, path)`` into the original architecture (tied weights are
              stored once, as safetensors' ``save_model`` does; untied models also load with ``load_file``);
  ``sparse``  the compact format (:mod:`prunelab.export.compact`: filter / kernel / bitmask / CSR per tensor,
              SHA-256 checked), read back exactly with :func:`prunelab.export.load_compact`;
  ``shrunk``  the physically smaller model of a channel method (:func:`prunelab.export.load_shrunk`);
  ``onnx``    the shrunk model when there is one, else the dense one, checked under onnxruntime;
  ``hf``      a Hugging Face model's folder (``save_pretrained``), which ``AutoModelForCausalLM.from_pretrained``
              loads without prunelab: the shrunk model, the same class with a smaller config, when the run
              removed units of structure (:mod:`prunelab.structure`), else the full config with the zeros in
              place.
  ``gguf``    that folder converted by llama.cpp's own ``convert_hf_to_gguf.py`` (:mod:`prunelab.export.gguf`;
              ``llama_cpp``: the checkout, or ``LLAMA_CPP``), for llama.cpp, Ollama and LM Studio.
``quantize`` (``hf`` only): ``int8`` | ``int4``, the folder's weights quantized by torchao
(:mod:`prunelab.export.quantize`), pruned weights checked to stay exactly zero.
``bench_run(run_dir)`` measures file bytes, parameters, FLOPs and CPU latency (batch 1 and 64, median of
repeats after warm-up) of the dense model, the pruned model with CSR linear layers, with each linear layer's
kernel chosen by measurement for that batch size (dense, torch CSR or SciPy CSR:
:func:`~prunelab.export.sparse_linear.choose_linear_kernels`) and the shrunk model, with the speedup beside the
FLOP reduction and a plain-language diagnosis where the speedup falls short.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..analysis import count_flops
from ..errors import ConfigError
from ..io import atomic_write_bytes, state_bytes, write_state
from ..export.compact import save_compact
from ..export.gguf import find_converter
from ..export.quantize import torchao_config
from ..export.onnx import export_onnx
from ..export.shrunk import load_shrunk
from ..export.sparse_linear import choose_linear_kernels, sparsify_linear

FORMATS = ("dense", "sparse", "shrunk", "onnx", "hf", "gguf")


def _open_run(run_dir: str | Path, data_root: str | None = None):
    """(context, final pruned model, masks) of a finished run with masks."""
    from .finished import load_final, open_finished

    ctx = open_finished(run_dir, data_root)
    model, masks = load_final(ctx)
    if masks is None:
        raise ConfigError(f"{run_dir} has no masks (a dense run): there is nothing pruned to export")
    return ctx, model.eval(), masks


def _shrunk_file(ctx) -> Path | None:
    f = ctx.paths.shrunk_model
    return f if f.is_file() else None


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, force: bool = False,
               data_root: str | None = None, llama_cpp: str | None = None, outtype: str = "f16",
               quantize: str | None = None) -> Path:
    """Write the artifact ``fmt`` of the run (default path: RUN_DIR/export/model.FMT..., which a new export
    replaces); returns its path. An ``out`` that exists is replaced only with ``force``, and only if it is a
    regular file (a folder for ``hf``: one prunelab wrote); see :mod:`prunelab.outputs`."""
    from ..outputs import check_output_file, check_output_folder

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if out is not None:  # refused before any work
        (check_output_folder if fmt == "hf" else check_output_file)(out, force)
    if quantize is not None:
        if fmt != "hf":
            raise ConfigError("--quantize writes a Hugging Face folder (--format hf); for GGUF use --outtype q8_0, "
                              "or llama.cpp's llama-quantize on the file for its 4-bit formats")
        torchao_config(quantize)
    converter = find_converter(llama_cpp) if fmt == "gguf" else None  # (before the run is opened)
    ctx, model, masks = _open_run(run_dir, data_root)
    path = Path(out) if out else ctx.paths.export(fmt)
    force = force or out is None  # the run's own export folder is prunelab's: a new export replaces it
    if fmt == "dense":
        write_state(path, model.state_dict(), {"format": "pt"})
    elif fmt == "sparse":
        save_compact(model, masks, path)
    elif fmt == "hf" and quantize is None:
        _write_hf(ctx, model, path, force)
    elif fmt in ("gguf", "hf"):  # a float folder first, beside the output, then converted or quantized from it
        import tempfile

        from ..export.gguf import to_gguf
        from ..export.quantize import quantize_folder

        path.parent.mkdir(parents=True, exist_ok=True)  # (the output is checked where it is written)
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.hf-", dir=path.parent) as tmp:
            tokenizer = _write_hf(ctx, model, Path(tmp) / "hf", False)
            if fmt == "gguf":
                to_gguf(Path(tmp) / "hf", path, converter, outtype, force)
            else:
                quantize_folder(Path(tmp) / "hf", path, quantize, force, tokenizer)
    elif fmt == "shrunk":
        src = _shrunk_file(ctx)
        if src is None and ctx.paths.shrunk_config.is_file():
            raise ConfigError(f"{run_dir}'s shrunk model is a Hugging Face model: export it with --format hf")
        if src is None:
            raise ConfigError(f"{run_dir} removed no channels (method without channels): export sparse or dense")
        atomic_write_bytes(path, src.read_bytes())
    else:
        src = _shrunk_file(ctx)
        net = load_shrunk(src)[0].eval() if src else model
        export_onnx(net, ctx.example_inputs().expand(4, *ctx.spec.input_shape).clone(), path)
    return path


def _write_hf(ctx, model, path: Path, force: bool) -> Any:
    """The run's Hugging Face folder: the shrunk model when the run removed units, its tokenizer (the data set's
    or the byte tokens; returned), and its pruning in config.json."""
    from ..models.hf import save_pretrained

    if ctx.paths.shrunk_config.is_file():
        from .controls import load_shrunk_run

        model = load_shrunk_run(ctx)
    tokenizer = None
    if ctx.spec.task == "causal_lm":  # the tokens the run trained and evaluated on, for the folder's users
        from ..data.text import data_tokenizer

        tokenizer = data_tokenizer(ctx.recipe.data.tokenizer)
    if hasattr(model, "save_pretrained"):  # (save_pretrained refuses the others in one sentence)
        model.config.prunelab = pruning_record(ctx)  # in config.json: what was pruned, over which weights
    save_pretrained(model, path, force=force, tokenizer=tokenizer)
    return tokenizer


def pruning_record(ctx) -> dict:
    """What an exported folder says about its pruning (config.json's ``prunelab``): the method, the sparsity
    over the targeted weights and over every weight matrix, and the widths a shrink changed; a quantizer or a
    converter reading the folder learns that its zeros are deliberate."""
    from .records import load_summary

    s = load_summary(ctx.paths.root)
    out = {"method": (ctx.recipe.prune.method if ctx.recipe.prune else None), "sparsity_targets": s.get("sparsity_prunable"),
           "sparsity_all_weight_matrices": (s.get("all_weights") or {}).get("sparsity")}
    if ctx.paths.shrunk_config.is_file():
        out["shrunk_params"] = (s.get("shrunk") or {}).get("params")
    return {k: v for k, v in out.items() if v is not None}


def latency_ms(model: torch.nn.Module, input_shape, batch: int, repeats: int = 30, warmup: int = 5,
               vocab: int | None = None) -> float:
    """Median wall time of one forward pass in milliseconds, after ``warmup`` passes, on random inputs (random
    token ids below ``vocab`` when given)."""
    shape = (batch,) + tuple(input_shape)
    x = torch.randint(0, vocab, shape) if vocab else torch.randn(shape)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def diagnose(name: str, speedup: float, flop_reduction: float, sparsity: float, batch: int,
             convs: bool = True) -> str:
    """One sentence on why a speedup falls short of the FLOP reduction (empty when it does not); ``convs``:
    whether the model has convolutions (which no CPU sparse kernel serves)."""
    if flop_reduction <= 1.05:
        return "no FLOPs removed: nothing to gain"
    if speedup >= 0.8 * flop_reduction:
        return ""
    if name == "dense with zeros":
        return ("unstructured zeros in dense kernels: the same multiplies run whatever the values; "
                "use sparse kernels (csr) or structured pruning (shrunk)")
    if name == "csr linear":
        if sparsity < 0.9:
            return f"sparsity {sparsity:.0%} is too low for sparse kernels to beat dense BLAS (needs about 90%+)"
        if batch == 1:
            return "batch 1: per-call overhead of the sparse kernel outweighs the few multiplies it saves"
        if convs:
            return "conv layers stay dense (no CPU sparse convolution in torch); only linear layers use CSR"
        return ("CSR reads an index per nonzero and scatters its products: at these sizes memory traffic, not "
                "the multiplies, bounds it")
    return "small shapes: per-layer call overhead, not arithmetic, dominates at this size"


def bench_run(run_dir: str | Path, repeats: int = 30, data_root: str | None = None) -> dict:
    """Measure the run's artifacts (see the module docstring); returns {rows, input_shape}."""
    ctx, model, masks = _open_run(run_dir, data_root)
    shape = tuple(ctx.spec.input_shape)
    dt = ctx.spec.input_dtype
    vocab = ctx.spec.num_classes if not dt.is_floating_point else None  # token ids
    torch.set_num_threads(1)
    from .paths import DENSE

    dense = ctx.build_model(checkpoint=ctx.paths.stage(DENSE)).eval()
    dense_bytes = len(state_bytes(dense.state_dict()))
    sparse_bytes = save_compact(model, masks, ctx.paths.export("sparse"))
    csr, replaced = sparsify_linear(model, masks, min_sparsity=0.0)
    # per batch size, each Linear with the kernel measured fastest here (dense, torch CSR or SciPy CSR)
    chosen = {b: choose_linear_kernels(model, masks, b) for b in (1, 64)}
    arts = [("unpruned", dense, dense_bytes), ("dense with zeros", model, dense_bytes),
            ("csr linear", csr, sparse_bytes), ("chosen kernels", {b: m for b, (m, _) in chosen.items()}, sparse_bytes)]
    src = _shrunk_file(ctx)
    if src is not None:
        arts.append(("shrunk", load_shrunk(src)[0].eval(), src.stat().st_size))
    elif ctx.paths.shrunk_config.is_file():
        from .controls import load_shrunk_run

        small = load_shrunk_run(ctx).eval()
        arts.append(("shrunk", small, len(state_bytes(small.state_dict()))))
    base_flops = count_flops(dense, shape, dtype=dt)["dense"]
    convs = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    base = {b: latency_ms(dense, shape, b, repeats, vocab=vocab) for b in (1, 64)}
    rows = []
    for name, net, nbytes in arts:
        counted = net if name in ("unpruned", "shrunk", "dense with zeros") else model  # same weights, zeros kept
        fl = count_flops(counted, shape, dtype=dt)
        flops = fl["dense"] if name in ("unpruned", "shrunk") else fl["nonzero"]
        params = sum(int((p != 0).sum()) for p in counted.parameters())
        row = {"artifact": name, "bytes": nbytes, "params_nonzero": params, "flops": flops,
               "flop_reduction": base_flops / max(flops, 1)}
        for b in (1, 64):
            at_b = net[b] if isinstance(net, dict) else net
            lat = base[b] if name == "unpruned" else latency_ms(at_b, shape, b, repeats, vocab=vocab)
            row[f"latency_ms_b{b}"] = lat
            row[f"speedup_b{b}"] = base[b] / lat
            row[f"diagnosis_b{b}"] = "" if name in ("unpruned", "chosen kernels") else diagnose(
                name, base[b] / lat, row["flop_reduction"], masks.sparsity(), b, convs)
        rows.append(row)
    kernels = {layer: {f"b{b}": chosen[b][1][layer] for b in (1, 64)} for layer in chosen[1][1]}
    return {"rows": rows, "input_shape": list(shape), "csr_layers": replaced, "kernels": kernels}
