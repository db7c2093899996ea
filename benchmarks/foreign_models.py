"""prunelab on models it was not written for, against Torch-Pruning at the same ratio.

Per model (``zoo_models.py``: torchvision and timm CNNs, ViTs, Swin, MaxViT, a detector, a segmentation model,
RAFT, Hugging Face models from configs, PyTorch's transformer and recurrent layers): seconds to trace + select +
shrink with ``l1_filter`` at ``--ratio`` (prunelab's time includes its trial shrink and the float64 check
that the shrunk model computes what the masked one does) against Torch-Pruning's ``MagnitudePruner`` (L1, the
last Linear ignored), both under the same tracing budget (``--trace-seconds``), from the same initial weights,
interleaved, min and median of ``--repeats``; parameters kept; whether each shrunk model runs (and, for
prunelab, matches); the channels removed and those out of reach with the reason; Wanda and SparseGPT at 50 %
(sparsity over their targets, seconds, 2 calibration samples); global magnitude at 0.8 over prunable weights
and what that is over every weight matrix; which weights 2:4 skips and why.

    python benchmarks/foreign_models.py --threads 1 --repeats 1 > benchmarks/results/foreign_models.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _prunelab(make, x, ratio):
    from prunelab import Pruner
    from prunelab.export import shrink

    torch.manual_seed(0)
    model = make().eval()
    t0 = time.perf_counter()
    p = Pruner(model, "l1_filter", sparsity=ratio, schedule="manual", example_inputs=x)
    p.prune(ratio, final=True)
    channels = p.summary()["channels"]
    small, _ = shrink(model, p.masks, x, graph=p.channels)  # ShrinkError unless the outputs match
    return _params(small), time.perf_counter() - t0, channels


def _torch_pruning(make, x, ratio):
    import torch_pruning as tp

    from prunelab.inputs import call, tensors
    from prunelab.structure.trace_budget import trace_budget

    torch.manual_seed(0)
    model = make().eval()
    t0 = time.perf_counter()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    with trace_budget(model):  # the budget prunelab's own trace has
        tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=last, forward_fn=call, output_transform=tensors).step()
    took = time.perf_counter() - t0
    try:
        with torch.no_grad():
            call(model, x)
        runs = "runs"
    except Exception as exc:  # a benchmark cell: what broke
        runs = f"does not run ({type(exc).__name__})"
    return _params(model), took, runs


def _calibrated(make, x, method):
    from prunelab import Pruner

    torch.manual_seed(0)
    model = make().eval()
    t0 = time.perf_counter()
    p = Pruner(model, {"name": method, "samples": 2}, sparsity=0.5, schedule="manual")
    p.calibrate([x], targets=False, samples=2)
    p.prune(0.5)
    return p.summary()["sparsity"], time.perf_counter() - t0


def _try(fn, *args):
    try:
        return fn(*args), ""
    except Exception as exc:  # a benchmark row, not a crash: say what failed
        first = (str(exc).splitlines() or [""])[0][:80]
        return None, f"{type(exc).__name__}{': ' + first if first else ''}"


def _removed(ch: dict) -> str:
    if "units" in ch:  # a transformer of a known layout: units read from its blocks, by kind
        return "; ".join(f"{k} {u['removed']:,} / {u['prunable']:,}" for k, u in ch["units"].items())
    cells = [f"{ch['removed']:,} / {ch['prunable']:,}"] if ch else ["-"]
    heads = ch.get("heads") or {}
    if heads.get("prunable"):
        cells.append(f"heads {heads['removed']} / {heads['prunable']}")
    for r, u in (ch.get("recurrent") or {}).items():
        cells.append(f"{r} units {u['removed']} / {u['units']}" + (f" (kept: {u['kept_because']})"
                                                                     if u["kept_because"] else ""))
    return "; ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trace-seconds", type=float, default=60.0, help="tracing budget of both tools")
    ap.add_argument("--models", help="comma-separated subset")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["PRUNELAB_TRACE_SECONDS"] = str(a.trace_seconds)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).parent))
    from zoo_models import models as zoo

    from prunelab import Pruner

    models = zoo()
    chosen = a.models.split(",") if a.models else list(models)
    print(f"# prunelab on foreign models\n\n{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
          f"{a.threads} thread(s), channel ratio {a.ratio}, tracing budget {a.trace_seconds:g} s for both tools, "
          f"times: min / median of {a.repeats} (prunelab and Torch-Pruning interleaved; prunelab's includes its "
          "trial shrink and the float64 equality check of the shrunk model). Wanda / SparseGPT: sparsity over "
          "their targets at 0.5, seconds (2 calibration samples)\n")
    print("| model | params | kept, prunelab | kept, Torch-Pruning | removed / removable (exactly) | out of reach | "
          "trace+select+shrink s, prunelab | prune s, Torch-Pruning | Wanda | SparseGPT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name in chosen:
        make, inputs = models[name]
        x = inputs()
        n0 = _params(make())
        ours, theirs = [], []
        for _ in range(a.repeats):
            ours.append(_try(_prunelab, make, x, a.ratio))
            theirs.append(_try(_torch_pruning, make, x, a.ratio))
        (o, oerr), (t, terr) = ours[0], theirs[0]
        o_cell = f"{o[0] / n0:.3f}, matches" if o else f"fails: {oerr}"
        t_cell = f"{t[0] / n0:.3f}, {t[2]}" if t else f"fails: {terr}"
        ch = o[2] if o else {}
        reach = ", ".join(f"{k} {v:,}" for k, v in (ch.get("blocked") or {}).items()) or "-"
        o_t = [r[1] for r, _ in ours if r]
        t_t = [r[1] for r, _ in theirs if r]
        fmt = lambda ts: f"{min(ts):.2f} / {statistics.median(ts):.2f}" if ts else "-"  # noqa: E731
        cal = []
        for method in ("wanda", "sparsegpt"):
            r, err = _try(_calibrated, make, x, method)
            cal.append(f"{r[0]:.3f}, {r[1]:.1f} s" if r else f"fails: {err}")
        print(f"| {name} | {n0:,} | {o_cell} | {t_cell} | {_removed(ch)} | {reach} | {fmt(o_t)} | {fmt(t_t)} | "
              f"{cal[0]} | {cal[1]} |", flush=True)
        torch.manual_seed(0)
        model = make().eval()
        s = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.8).summary()
        nm = Pruner(make().eval(), {"name": "magnitude", "granularity": "nm"})
        left = ", ".join(r["name"] for r in s["untargeted"][:4]) or "none"
        more = f" and {len(s['untargeted']) - 4} more" if len(s["untargeted"]) > 4 else ""
        notes.append(f"- {name}: global magnitude 0.8 over {s['prunable_params']:,} prunable weights is "
                     f"{s['all_weights']['sparsity']:.3f} over all {s['all_weights']['params']:,} weight-matrix "
                     f"entries (not targeted: {left}{more}); 2:4 applies to {len(nm.params)} weights, skips "
                     f"{len(nm.skipped)}" + (f" ({', '.join(list(nm.skipped)[:3])}"
                                             f"{' ...' if len(nm.skipped) > 3 else ''})" if nm.skipped else ""))
    print("\nUnstructured accounting and N:M:\n")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
