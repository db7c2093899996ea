"""Compact files against dense safetensors: size, save time and load time, with the raw file I/O as the limit.

For each model and masks: ``dense`` writes the state_dict with ``safetensors.torch.save_file`` (no fsync) and
loads it with ``load_file`` + ``load_state_dict`` into a model (so every byte is really read); ``compact``
does ``export.save_compact`` (atomic: a temporary file, fsync, rename) and ``load_compact(path, into=model)``
(the digest of every stored tensor and the manifest are checked before the model's tensors are filled).
``dense, atomic`` is the dense file written the way prunelab writes its checkpoints (``io.write_state``:
deterministic header, a temporary file, fsync, rename), so the cost of durability is seen apart from the format's. ``raw`` writes and reads the compact file's bytes with plain file calls: no format can be
faster. Interleaved (raw, dense, compact, raw, ...), min and median of ``--repeats``, in a temporary folder.

    python benchmarks/compact_io.py [--repeats 5] [--models lenet5,vgg16,resnet50]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file, save_file

from prunelab import Pruner
from prunelab.export.compact import load_compact, save_compact
from prunelab.io import read_state, write_state
from prunelab.models import build_model


def _cases(names):
    for name in names:
        torch.manual_seed(0)
        if name == "lenet5":
            model = build_model("lenet5", (1, 28, 28), 10)
            yield name, "global magnitude 98%", model, Pruner(model, {"name": "magnitude", "allocation": "global"},
                                                              sparsity=0.98).masks
        elif name == "vgg16":
            model = torchvision.models.vgg16()
            yield name, "global magnitude 90%", model, Pruner(model, {"name": "magnitude", "allocation": "global"},
                                                              sparsity=0.9).masks
        elif name == "resnet50":
            model = torchvision.models.resnet50().eval()
            masks = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=torch.randn(1, 3, 64, 64)).masks
            yield name, "l1_filter 50% (filter format)", model, masks


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,vgg16,resnet50")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{datetime.date.today()}; torch {torch.__version__}; {a.threads} thread(s); {os.cpu_count()} cores; "
          f"{a.repeats} repeats interleaved; files in {tempfile.gettempdir()}\n")
    print("| model | masks | file | MB | save s (min / median) | load s (min / median) | save / dense | "
          "load / dense |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, what, model, masks in _cases(a.models.split(",")):
            dense_p, comp_p, raw_p = Path(tmp, "d.safetensors"), Path(tmp, "c.safetensors"), Path(tmp, "raw.bin")
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            fresh = copy.deepcopy(model)  # a model of the same shapes to load into
            save_compact(model, masks, comp_p)
            blob = comp_p.read_bytes()
            t = {k: {"save": [], "load": []} for k in ("raw", "dense", "dense, atomic", "compact")}
            atomic_p = Path(tmp, "a.safetensors")
            for _ in range(a.repeats):
                t["raw"]["save"].append(_time(lambda: raw_p.write_bytes(blob)))
                t["raw"]["load"].append(_time(lambda: raw_p.read_bytes()))
                t["dense"]["save"].append(_time(lambda: save_file(state, str(dense_p))))
                t["dense"]["load"].append(_time(lambda: fresh.load_state_dict(load_file(str(dense_p)))))
                t["dense, atomic"]["save"].append(_time(lambda: write_state(atomic_p, state)))
                t["dense, atomic"]["load"].append(_time(lambda: fresh.load_state_dict(read_state(atomic_p)[0])))
                t["compact"]["save"].append(_time(lambda: save_compact(model, masks, comp_p)))
                t["compact"]["load"].append(_time(lambda: load_compact(comp_p, into=fresh)))
            sizes = {"raw": raw_p.stat().st_size, "dense": dense_p.stat().st_size,
                     "dense, atomic": atomic_p.stat().st_size, "compact": comp_p.stat().st_size}
            med = {k: {op: statistics.median(v[op]) for op in v} for k, v in t.items()}
            for k in t:
                s, l_ = t[k]["save"], t[k]["load"]
                print(f"| {name} | {what} | {k} | {sizes[k] / 2**20:.2f} | {min(s):.4f} / {med[k]['save']:.4f} | "
                      f"{min(l_):.4f} / {med[k]['load']:.4f} | {med[k]['save'] / med['dense']['save']:.2f} | "
                      f"{med[k]['load'] / med['dense']['load']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
