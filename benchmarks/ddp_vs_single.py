"""One LeNet-5 DropPruning recipe in one process and in two gloo processes under torchrun, on this CPU.

Reports accuracy, sparsity, whether the ranks' masks were identical after every pruning round (their digests,
recorded by the run) and the wall time of both. The single process uses all cores' threads; each of the two
ranks uses one thread.

    python benchmarks/ddp_vs_single.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from prunelab.experiment.paths import RunPaths

OVERRIDES = ["train.epochs=4", "prune.schedule.rounds=4", "prune.retrain.epochs=1", "prune.final_epochs=2",
             "data.train_subset=20000"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], runs_dir: Path, env: dict) -> tuple[dict, float, list]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd + ["--runs-dir", str(runs_dir), "--no-progress"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"run failed:\n{res.stderr[-3000:]}")
    (d,) = [p for p in runs_dir.iterdir() if p.name.startswith("lenet5")]
    run_paths = RunPaths(d)
    lines = [json.loads(l) for l in run_paths.metrics.read_text().splitlines()]
    digests = [l.get("rank_mask_digests") for l in lines if "prune" in l]
    return json.loads(run_paths.summary.read_text()), wall, digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs_ddp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/ddp_vs_single.md")
    a = ap.parse_args()
    over = OVERRIDES + [f"seed={a.seed}", f"data.root={a.data_root}"]
    base = Path(a.runs_dir)
    single, t1, _ = run([sys.executable, "-m", "prunelab", "run", "lenet5_mnist_drop", *over], base / "single",
                        dict(os.environ))
    ddp, t2, digests = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            "--master_addr=127.0.0.1", f"--master_port={_port()}", "-m", "prunelab", "run",
                            "lenet5_mnist_drop", *over], base / "ddp2", {**os.environ, "OMP_NUM_THREADS": "1"})
    same = all(d and len(set(d)) == 1 for d in digests)
    lines = ["# LeNet-5 DropPruning: one process vs two gloo processes (torchrun, CPU)", "",
             f"Command: `python {' '.join(sys.argv)}`; recipe `lenet5_mnist_drop` with {' '.join(OVERRIDES)}.", "",
             "| processes | dense acc % | pruned acc % | sparsity | wall s | masks identical across ranks |",
             "|---|---|---|---|---|---|",
             f"| 1 | {single['dense_acc'] * 100:.2f} | {single['pruned_acc'] * 100:.2f} | "
             f"{single['sparsity_prunable']:.4f} | {t1:.0f} | - |",
             f"| 2 (gloo) | {ddp['dense_acc'] * 100:.2f} | {ddp['pruned_acc'] * 100:.2f} | "
             f"{ddp['sparsity_prunable']:.4f} | {t2:.0f} | {'yes, after every one of ' + str(len(digests)) + ' rounds' if same else 'NO'} |",
             ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
