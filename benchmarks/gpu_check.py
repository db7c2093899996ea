"""The device check: one command, on one CUDA GPU, no download, under about 8 minutes.

1. ``pytest -m cuda``: every CUDA-marked test (recipes' first steps on the GPU, calibration in bfloat16,
   shrink, mixed precision, checkpoints between GPU and CPU).
2. Training steps per second of VGG-16 on CIFAR-shaped batches (128 x 3 x 32 x 32) and ResNet-50 on
   ImageNet-shaped ones (64 x 3 x 224 x 224), synthetic, 90 % magnitude masks enforced every step, through
   prunelab's Trainer: fp32, bf16, bf16 + channels_last (ratios against fp32, measured in the same run,
   interleaved, min and median of ``--repeats``), and the host syncs per step (reads of tensor values, the
   timing included: no bare-loop baseline here, see ``trainer_loop.py`` for the CPU one).
3. SparseGPT at 50 % on a LLaMA-shaped model of about 1.1 B parameters built from a config (bfloat16, 22
   blocks of hidden 2048, random token windows): seconds and peak memory (``torch.cuda.max_memory_allocated``)
   against the model's own bytes.

Writes ``benchmarks/results/gpu_check.md`` (and prints it).

    python benchmarks/gpu_check.py
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _tests() -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return "\n".join(failed + lines[-1:]), proc.returncode


def _steps_per_second(name: str, cfg_kw: dict, steps: int) -> tuple[float, float]:
    """(steps/s, host syncs per step) of ``steps`` training steps after 3 warm-up ones."""
    import torchvision

    from prunelab import Pruner
    from prunelab.training import OptimConfig, Trainer

    torch.manual_seed(0)
    if name == "vgg16":
        from prunelab.models import build_model

        model, shape, batch = build_model("vgg16", (3, 32, 32), 10, seed=0), (3, 32, 32), 128
    else:
        model, shape, batch = torchvision.models.resnet50(num_classes=1000), (3, 224, 224), 64
    model = model.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, *shape, device="cuda", generator=g)
    y = torch.randint(0, 10, (batch,), device="cuda", generator=g)
    pruner = Pruner(model, "magnitude", sparsity=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(n):
        cfg = OptimConfig(epochs=1, lr=0.01, lr_schedule="constant", log_every=10 ** 6, **cfg_kw)
        Trainer(model, opt, cfg, [(x, y)] * n, pruner=pruner, progress=False, device="cuda").fit()
    run(3)
    torch.cuda.synchronize()
    reads = [0]
    saved = {k: getattr(torch.Tensor, k) for k in ("item", "__float__", "__int__", "__bool__", "tolist")}

    def counting(fn):
        def inner(t, *a, **k):
            reads[0] += 1
            return fn(t, *a, **k)
        return inner
    for k, fn in saved.items():
        setattr(torch.Tensor, k, counting(fn))
    try:
        t0 = time.perf_counter()
        run(steps)
        torch.cuda.synchronize()
        took = time.perf_counter() - t0
    finally:
        for k, fn in saved.items():
            setattr(torch.Tensor, k, fn)
    return steps / took, reads[0] / steps


def _sparsegpt_1b(windows: int, tokens: int) -> dict:
    import transformers

    from prunelab import Pruner

    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                   num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=tokens)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randint(0, 32000, (windows, tokens), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    p = Pruner(model, {"name": "sparsegpt", "samples": windows}, sparsity=0.5, schedule="manual")
    p.calibrate([(x[i:i + 8], x[i:i + 8]) for i in range(0, windows, 8)], targets=True)
    p.prune(0.5)
    torch.cuda.synchronize()
    return {"params": params, "seconds": time.perf_counter() - t0, "model_gib": base / 2 ** 30,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "sparsity": p.summary()["sparsity"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per setting and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (min and median reported)")
    ap.add_argument("--windows", type=int, default=64, help="SparseGPT calibration windows")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per calibration window")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.md"),
                    help="where the report goes")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; none is visible here", file=sys.stderr)
        sys.exit(2)
    torch.backends.cudnn.benchmark = True
    lines = [f"# Device check ({time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name(0)}, torch "
             f"{torch.__version__}, CUDA {torch.version.cuda})", ""]
    summary, rc = _tests()
    lines += ["## pytest -m cuda", "", "```", summary, "```", ""]
    print("\n".join(lines), flush=True)
    variants = {"fp32": {}, "bf16": {"precision": "bf16"}, "bf16 + channels_last": {"precision": "bf16",
                                                                                    "channels_last": True}}
    lines += ["## Training steps (Trainer, 90 % masks enforced every step)", "",
              f"min / median steps/s of {a.repeats} interleaved repeats of {a.steps} steps; ratio of medians "
              "against fp32", "", "| model | variant | steps/s | ratio | host syncs per step |", "|---|---|---|---|---|"]
    for name in ("vgg16", "resnet50"):
        rates = {v: [] for v in variants}
        syncs = {}
        for _ in range(a.repeats):
            for v, kw in variants.items():
                r, s = _steps_per_second(name, kw, a.steps)
                rates[v].append(r)
                syncs[v] = s
        base = statistics.median(rates["fp32"])
        for v in variants:
            med = statistics.median(rates[v])
            lines.append(f"| {name} | {v} | {min(rates[v]):.2f} / {med:.2f} | {med / base:.2f} | {syncs[v]:.2f} |")
        print("\n".join(lines[-len(variants):]), flush=True)
    r = _sparsegpt_1b(a.windows, a.tokens)
    lines += ["", "## SparseGPT, LLaMA-shaped, bfloat16", "",
              f"{r['params'] / 1e9:.2f} B parameters, {a.windows} windows x {a.tokens} tokens: {r['seconds']:.1f} s, "
              f"sparsity {r['sparsity']:.3f} over the targets; the model {r['model_gib']:.2f} GiB, peak allocated "
              f"{r['peak_gib']:.2f} GiB ({r['peak_gib'] / r['model_gib']:.2f}x the model)", ""]
    text = "\n".join(lines)
    Path(a.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    sys.exit(1 if rc else 0)


if __name__ == "__main__":
    main()
