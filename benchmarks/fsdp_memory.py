"""What one rank holds while it recovers a pruned model by distillation: DDP against FSDP2 (train.parallel).

Two gloo processes (torchrun, CPU) each build the same LLaMA-layout student (``--layers`` x ``--hidden``, float32),
prune it to 50 % (magnitude), take a copy of the dense model as the teacher, and run ``--steps`` AdamW steps of
distillation (:class:`prunelab.training.distill.Distillation`) with the pruner enforcing the masks, once under
DistributedDataParallel and once sharded by :func:`prunelab.training.parallel.shard` (student and teacher).
Printed per rank: the bytes it holds of the student's weights, their gradients, the AdamW state and the
teacher's weights (a sharded tensor counts its local shard), against the whole model's bytes; the ideal for
FSDP is 1/world of each. Seconds per step (min / median over the steps after the first) beside it: on CPU with
gloo, sharding adds an all-gather per block per pass; the point here is the memory, on GPUs the time too.

    python benchmarks/fsdp_memory.py [--layers 4 --hidden 512 --steps 5]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def _bytes(tensors) -> int:
    from prunelab.masks import local

    return sum(local(t).numel() * t.element_size() for t in tensors if t is not None)


def rank_main(args) -> None:
    import torch
    import torch.distributed as dist
    import transformers
    from torch.nn.parallel import DistributedDataParallel

    from prunelab import Pruner
    from prunelab.training.distill import Distillation
    from prunelab.training.parallel import shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(num_hidden_layers=args.layers, hidden_size=args.hidden,
                                   intermediate_size=args.hidden * 11 // 4, num_attention_heads=args.hidden // 64,
                                   num_key_value_heads=args.hidden // 64, vocab_size=4096, max_position_embeddings=128)
    out = []
    for mode in ("ddp", "fsdp"):
        torch.manual_seed(0)
        student = transformers.LlamaForCausalLM(cfg)
        teacher = copy.deepcopy(student)
        pruner = Pruner(student, "magnitude", sparsity=0.5, schedule="manual")
        pruner.prune(0.5)
        whole = _bytes(student.parameters())
        if mode == "fsdp":
            shard(student, teacher)
            pruner.rebind()
            net = student
        else:
            net = DistributedDataParallel(student)
        loss_fn = Distillation(teacher, 0.5, 2.0, "causal_lm")
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        times = []
        for step in range(args.steps):
            x = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(step * world + rank))
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(x, net(x), x)
            loss.backward()
            pruner.after_backward()
            opt.step()
            pruner.step(opt)
            times.append(time.perf_counter() - t0)
        held = {"weights": _bytes(student.parameters()), "grads": _bytes(p.grad for p in student.parameters()),
                "adam": _bytes(v for s in opt.state.values() for v in s.values() if v.dim() > 0),
                "teacher": _bytes(teacher.parameters())}
        zeros = all(not (pruner.params[n].full_tensor() if mode == "fsdp" else pruner.params[n])[~m].any()
                    for n, m in pruner.masks.items())
        out.append({"mode": mode, "rank": rank, "whole": whole, **held, "pruned_zero": zeros,
                    "step_min": min(times[1:] or times), "step_median": statistics.median(times[1:] or times)})
        loss_fn.close()
    print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_main:
        return rank_main(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", __file__, "--rank-main", "--layers", str(args.layers), "--hidden",
           str(args.hidden), "--steps", str(args.steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [r for line in res.stdout.splitlines() if line.startswith("RESULT ") for r in json.loads(line[7:])]
    if res.returncode or not rows:
        sys.exit(f"the ranks failed (exit {res.returncode}): {res.stderr[-2000:]}")
    mib = lambda b: f"{b / 2 ** 20:,.1f}"  # noqa: E731
    print(f"# One rank's share of distillation state, DDP vs FSDP2 ({datetime.date.today()}, 2 gloo ranks, CPU, "
          f"1 thread each)\n\n`python benchmarks/fsdp_memory.py --layers {args.layers} --hidden {args.hidden} "
          f"--steps {args.steps}`; the student's weights are {mib(rows[0]['whole'])} MiB (float32).\n")
    print("| mode | rank | weights MiB | grads MiB | AdamW state MiB | teacher MiB | total / the 5 whole copies (weights, grads, 2 moments, teacher) | "
          "pruned weights exactly 0 | s per step (min / median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["mode"], r["rank"])):
        total = r["weights"] + r["grads"] + r["adam"] + r["teacher"]
        print(f"| {r['mode']} | {r['rank']} | {mib(r['weights'])} | {mib(r['grads'])} | {mib(r['adam'])} | "
              f"{mib(r['teacher'])} | {total / (5 * r['whole']):.2f} | {r['pruned_zero']} | "
              f"{r['step_min']:.3f} / {r['step_median']:.3f} |")


if __name__ == "__main__":
    main()
