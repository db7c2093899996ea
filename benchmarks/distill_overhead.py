"""Cost of distillation during recovery: training steps of the small LLaMA of ``llama_pystdlib_dense`` with the
task loss against with ``prunelab.training.distill.Distillation`` (the dense model as teacher), interleaved.

    python benchmarks/distill_overhead.py --runs-dir runs --threads 1 --steps 20 --repeats 3

The student is the dense model itself (the cost does not depend on what was pruned); a step is forward,
loss, backward and an AdamW step at batch 32 x 128 tokens. Printed: seconds per step (min and median over
repeats of ``--steps`` steps), the ratio, and the peak resident memory added by the teacher's forward
(measured as the growth of ru_maxrss during the distilled steps, which run second).
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab.training.distill import Distillation
    from prunelab.experiment import load_recipe, trained_dense
    from prunelab.training.tasks import get_task

    recipe = load_recipe("llama_pystdlib_dense")
    ctx, teacher = trained_dense(recipe, a.runs_dir)
    student = copy.deepcopy(teacher).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    task = get_task("causal_lm")
    losses = {"task loss": lambda x, out, y: task.loss(out, y),
              "distillation": Distillation(teacher, 0.5, 2.0, "causal_lm")}
    batches = [(x, y) for (x, y), _ in zip(ctx.data.train, range(a.steps))]
    times = {k: [] for k in losses}
    rss = {}
    for _ in range(a.repeats):
        for k, fn in losses.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                fn(x, student(x), y).backward()
                opt.step()
            times[k].append((time.perf_counter() - t0) / len(batches))
            rss[k] = max(rss.get(k, 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    base = statistics.median(times["task loss"])
    print(f"# Distillation overhead ({time.strftime('%Y-%m-%d')}, {a.threads} thread(s), {a.steps} steps x "
          f"{a.repeats}, batch {ctx.data.train.batch_size} x {recipe.data.seq_len} tokens)\n")
    print("| loss | s / step (min / median) | ratio | growth of the peak RSS during these steps (MiB) |")
    print("|---|---|---|---|")
    for k, t in times.items():
        print(f"| {k} | {min(t):.3f} / {statistics.median(t):.3f} | {statistics.median(t) / base:.2f}x | "
              f"{rss[k] / 1024:.0f} |")


if __name__ == "__main__":
    main()
