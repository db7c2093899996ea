"""Rethinking the Value of Network Pruning, reduced to this machine: fine-tuned vs Scratch-E vs Scratch-B.

Two families of settings, each over seeds, each run with the controls of its recipe:
  - ``lenet5``: LeNet-5 on MNIST (recipe ``lenet5_mnist_rethinking``): l1_filter at 50% and 75% of the filters
    (and fc1 units) of every layer but the classifier; unstructured global magnitude at 80% and 95%.
  - ``vggs``: a small CIFAR-style VGG on Fashion-MNIST (recipe ``vggs_fashion_slimming``): slimming at 50% and
    70% of the channels (sparsity-trained dense model), l1_filter at 50% and 75%, unstructured global magnitude
    over conv weights at 80% and 95%.
Writes the paper-style table (mean +- std over seeds) and, for every shrunk model, parameters, FLOPs, file bytes
and CPU latency at batch 1 and 64 (median of repeats after warm-up, one thread) against the unpruned model, with
the latency speedup divided by the FLOP reduction.

    python benchmarks/rethinking.py --family lenet5 --seeds 0,1,2 --data-root ../shared/data --jobs 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MAG = "{name: magnitude, allocation: global}"
FAMILIES = {
    "lenet5": ("lenet5_mnist_rethinking", {
        "l1_filter 50%": ["prune.method=l1_filter", "prune.sparsity=0.5"],
        "l1_filter 75%": ["prune.method=l1_filter", "prune.sparsity=0.75"],
        "magnitude 80%": [f"prune.method={MAG}", "prune.sparsity=0.8"],
        "magnitude 95%": [f"prune.method={MAG}", "prune.sparsity=0.95"],
    }),
    "vggs": ("vggs_fashion_slimming", {
        "slimming 50%": ["prune.sparsity=0.5"],
        "slimming 70%": ["prune.sparsity=0.7"],
        "l1_filter 50%": ["train.bn_l1=0", "prune.method=l1_filter", "prune.sparsity=0.5"],
        "l1_filter 75%": ["train.bn_l1=0", "prune.method=l1_filter", "prune.sparsity=0.75"],
        "magnitude 80% (conv)": ["train.bn_l1=0", f"prune.method={MAG}", "prune.targets={module_types: [Conv2d]}",
                                 "prune.sparsity=0.8", "prune.controls=[finetune, scratch_e, scratch_b, lottery_reset]"],
        "magnitude 95% (conv)": ["train.bn_l1=0", f"prune.method={MAG}", "prune.targets={module_types: [Conv2d]}",
                                 "prune.sparsity=0.95", "prune.controls=[finetune, scratch_e, scratch_b, lottery_reset]"],
    }),
}


def _run(job: tuple) -> tuple[str, int, str]:
    import torch

    torch.set_num_threads(job[-1])
    from prunelab.experiment import Runner, load_recipe, run_dir_for

    recipe_name, overrides, runs_dir, label, seed, _ = job
    recipe = load_recipe(recipe_name, overrides)
    d = run_dir_for(recipe, runs_dir)
    t0 = time.perf_counter()
    Runner(recipe, d, progress=False, log=lambda m: None).run()
    print(f"{label} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return label, seed, str(d)


def _latency(model, shape, batch: int, repeats: int) -> float:
    import torch

    x = torch.randn((batch,) + tuple(shape))
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            model(x)
            if i >= 3:  # warm-up first
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latency_rows(run_dirs: dict, repeats: int) -> list[str]:
    import torch

    torch.set_num_threads(1)
    from prunelab.analysis import count_flops
    from prunelab.experiment import open_finished
    from prunelab.experiment.paths import DENSE, MODEL
    from prunelab.export.shrunk import load_shrunk

    lines = ["| setting | params (unpruned -> shrunk) | FLOPs reduction | file bytes (unpruned -> shrunk) | "
             "latency b=1 ms (unpruned -> shrunk) | latency b=64 ms | speedup b=1 / b=64 | "
             "speedup / FLOP reduction (b=64) |", "|---|---|---|---|---|---|---|---|"]
    for label, dirs in run_dirs.items():
        ctx = open_finished(dirs[0])
        shrunk_file = ctx.paths.shrunk_model
        if not shrunk_file.is_file():
            continue
        small, manifest = load_shrunk(shrunk_file)
        big = ctx.build_model(checkpoint=ctx.paths.stage(DENSE))
        shape = tuple(manifest["model"]["input_shape"])
        fb, fs = count_flops(big, shape)["dense"], count_flops(small, shape)["dense"]
        nb, ns = (sum(p.numel() for p in m.parameters()) for m in (big, small))
        bb = (ctx.paths.stage(DENSE) / MODEL).stat().st_size
        bs = shrunk_file.stat().st_size
        lat = {(k, b): _latency(m, shape, b, repeats) * 1e3 for k, m in (("big", big), ("small", small)) for b in (1, 64)}
        s1, s64 = lat["big", 1] / lat["small", 1], lat["big", 64] / lat["small", 64]
        lines.append(f"| {label} | {nb:,} -> {ns:,} | {fb / fs:.2f}x | {bb:,} -> {bs:,} | "
                     f"{lat['big', 1]:.3f} -> {lat['small', 1]:.3f} | {lat['big', 64]:.2f} -> {lat['small', 64]:.2f} | "
                     f"{s1:.2f}x / {s64:.2f}x | {s64 / (fb / fs):.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=list(FAMILIES), default="lenet5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default: 2 cores / jobs)")
    ap.add_argument("--repeats", type=int, default=50, help="latency repeats per measurement")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/rethinking_FAMILY)")
    a = ap.parse_args()
    recipe, settings = FAMILIES[a.family]
    seeds = [int(s) for s in a.seeds.split(",")]
    threads = a.threads or max(1, 2 // a.jobs)
    jobs = [(recipe, over + [f"seed={s}", f"data.root={a.data_root}"], a.runs_dir, label, s, threads)
            for s in seeds for label, over in settings.items()]
    run_dirs: dict[str, list[str]] = {label: [] for label in settings}
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for label, seed, d in pool.map(_run, jobs):
            run_dirs[label].append(d)
    from prunelab.experiment.compare import compare_runs, table_lines

    table, _ = table_lines(compare_runs([d for label in settings for d in run_dirs[label]]))
    lat = latency_rows(run_dirs, a.repeats)
    out = Path(a.out or f"benchmarks/results/rethinking_{a.family}")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([f"# Rethinking the Value of Network Pruning, reduced: {a.family} ({recipe})", "",
                      f"Command: `python {' '.join(sys.argv)}`", "",
                      f"Top-1 test accuracy %, mean +- std over seeds {seeds}. params / FLOPs: the pruned model "
                      "(shrunk when channels were removed; nonzero weights otherwise).", "", *table, "",
                      "## Shrunk models against the unpruned model (seed %d, CPU, 1 thread)" % seeds[0], "", *lat, ""])
    Path(f"{out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
