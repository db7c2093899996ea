"""A pruned CNN deployed: dense / shrunk / sparse x fp32 / int8 in ONNX Runtime, latency and file size.

torchvision's ResNet-50 (``--model``; random weights: latency and size do not depend on their values) at
``--size`` px, three ways:

- ``dense``: as built;
- ``shrunk``: half the channels by L1 norm (``Pruner(model, "l1_filter", sparsity=0.5)``), then
  ``prunelab.export.shrink``: a smaller dense model;
- ``sparse``: 90 % of the weights by global magnitude, zeros in place: the same graph and shapes.

Each is exported to ONNX (``prunelab.export.export_onnx``, outputs checked against torch) in fp32 and
quantized to int8 by ONNX Runtime's own static quantizer (QDQ, per-channel weights, calibrated on 8 random
inputs). Printed: file bytes, and batch-1 latency in ONNX Runtime (``--threads`` intra-op threads, sessions
interleaved, min and median of ``--repeats`` rounds of 10 runs after a warm-up), each against the dense fp32
model measured in the same run. ONNX Runtime runs sparse weights as dense ones: the sparse rows show what
unstructured sparsity buys there.

    python benchmarks/deploy_vision.py [--model resnet50] [--size 224] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision


def variants(name: str, size: int) -> dict[str, torch.nn.Module]:
    from prunelab import Pruner
    from prunelab.export import shrink

    x = torch.randn(1, 3, size, size)
    build = lambda: getattr(torchvision.models, name)(weights=None).eval()  # noqa: E731
    torch.manual_seed(0)
    dense = build()
    torch.manual_seed(0)
    model = build()
    pruner = Pruner(model, "l1_filter", sparsity=0.5, schedule="manual", example_inputs=x)
    pruner.prune(0.5)
    small, _ = shrink(model, pruner.masks, x, graph=pruner.structure)
    torch.manual_seed(0)
    sparse = build()
    Pruner(sparse, {"name": "magnitude", "allocation": "global"}, sparsity=0.9)
    return {"dense": dense, "shrunk": small.eval(), "sparse": sparse}


def quantize(fp32: Path, int8: Path, size: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            g = np.random.default_rng(0)
            self.batches = iter([{"input": g.standard_normal((1, 3, size, size), dtype=np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort

    from prunelab.export import export_onnx

    torch.set_num_threads(a.threads)
    x = torch.randn(1, 3, a.size, a.size)
    sessions, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in variants(a.model, a.size).items():
            fp32 = Path(tmp) / f"{name}.onnx"
            export_onnx(model, x, fp32)
            m = onnx.load(str(fp32))
            old = m.graph.input[0].name
            for node in m.graph.node:  # one input name for the quantizer's reader
                node.input[:] = ["input" if i == old else i for i in node.input]
            m.graph.input[0].name = "input"
            onnx.save(m, str(fp32))
            int8 = Path(tmp) / f"{name}.int8.onnx"
            quantize(fp32, int8, a.size)
            for kind, path in (("fp32", fp32), ("int8", int8)):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = a.threads, 1
                sessions[(name, kind)] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                sizes[(name, kind)] = path.stat().st_size
        feed = {"input": x.numpy()}
        for s in sessions.values():
            s.run(None, feed)  # warm-up
        times: dict = {k: [] for k in sessions}
        for _ in range(a.repeats):
            for k, s in sessions.items():  # interleaved
                t0 = time.perf_counter()
                for _ in range(10):
                    s.run(None, feed)
                times[k].append((time.perf_counter() - t0) / 10 * 1e3)
    base_t, base_b = min(times[("dense", "fp32")]), sizes[("dense", "fp32")]
    print(f"# {a.model} at {a.size} px in ONNX Runtime {ort.__version__}, batch 1, {a.threads} thread(s); "
          f"{datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores\n")
    print("| model | weights | file MB | x dense fp32 | latency ms (min / median) | speedup over dense fp32 |")
    print("|---|---|---|---|---|---|")
    for (name, kind), ts in times.items():
        b = sizes[(name, kind)]
        print(f"| {name} | {kind} | {b / 1e6:.1f} | {b / base_b:.2f} | {min(ts):.1f} / {statistics.median(ts):.1f} | "
              f"{base_t / min(ts):.2f}x |")


if __name__ == "__main__":
    main()
