"""Calibration from disk under a memory limit: a model of twice the limit pruned block by block.

A LLaMA-layout model (``--layers`` x ``--hidden``, float32, random weights: memory does not depend on their
values) is saved as safetensors shards. Each side then runs Wanda (or ``--method sparsegpt``) at 50 % in a fresh
process whose memory is capped at what that process holds after importing torch and
transformers plus half the model's bytes (``--limit-fraction``): a cgroup (v1 memory controller) that the
process joins after its imports, so the cap applies to what the side itself allocates, page cache included
(clean file pages are reclaimed under the cap; exceeding it is the kernel's OOM kill). Where no cgroup can be
made the sides run uncapped and the table says so:

- ``memory``: ``from_pretrained`` into RAM, then calibrate and prune (the usual path);
- ``disk``: :func:`prunelab.calibration.disk.open_on_disk`, calibrate with ``offload=``, prune, ``finish()``
  (the pruned folder written block by block).

Printed per side: whether it finished under the cap, peak resident memory above the imports (``ru_maxrss`` minus
the resident size after importing), wall and CPU seconds, and, for scale, the model's bytes, its largest block,
what sits outside the blocks (embeddings, head), the masks (one byte per prunable weight) and the cached block
inputs. The physical floor of the disk path is one block + outside + masks + cache. Interleaved ``--repeats``
(min and median). Threads: 1 (stated; set with ``--threads``).

    python benchmarks/calibrate_from_disk.py [--layers 8 --hidden 1024] [--repeats 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """The peak of this process's anonymous (private) resident memory, sampled every 5 ms by a thread: the
    memory it must own, unlike file pages of mapped safetensors shards, which the kernel reclaims under a cap."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = _status("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status("RssAnon"))


def evict(folder: Path) -> None:
    """Drop the model files from the page cache (clean pages, no privilege needed), so each side reads them
    from disk and its cgroup is charged for what it reads, not the parent that wrote them."""
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_cgroup(cap: int) -> Path | None:
    """A memory cgroup capped at ``cap`` bytes (swap included where the kernel accounts it), else None."""
    root = Path("/sys/fs/cgroup/memory")
    try:
        group = root / f"prunelab-bench-{os.getpid()}-{time.monotonic_ns()}"
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(cap))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(cap))
        return group
    except OSError:
        return None


def child(args) -> None:
    """One side in this process: cap the address space, run, print one JSON line."""
    import torch
    import transformers
    from prunelab import Pruner
    from prunelab.calibration.disk import open_on_disk

    torch.set_num_threads(args.threads)
    # imported before the baseline: the model module's libraries (~220 MB resident here) are not the side's
    from transformers import LlamaForCausalLM  # noqa: F401
    import accelerate.big_modeling  # noqa: F401
    base_rss, base_anon = _status(), _status("RssAnon")
    if args.cgroup:  # from here on, what this process allocates counts against the cap
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    batches = [torch.randint(0, args.vocab, (4, args.seq), generator=torch.Generator().manual_seed(i))
               for i in range(args.samples // 4)]
    anon = AnonPeak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = {"side": args.child, "ok": False}
    try:
        if args.child == "memory":
            model = transformers.AutoModelForCausalLM.from_pretrained(args.folder)
            pruner = Pruner(model, args.method, sparsity=0.5, schedule="manual")
            pruner.calibrate(batches, samples=args.samples)
            pruner.prune(0.5)
        else:
            model, disk = open_on_disk(args.folder, Path(args.folder).parent / f"out-{os.getpid()}")
            pruner = Pruner(model, args.method, sparsity=0.5, schedule="manual")
            pruner.calibrate(batches, samples=args.samples, offload=disk)
            pruner.prune(0.5)
            disk.finish()
        out.update(ok=True, sparsity=pruner.masks.sparsity(), mask_bytes=pruner.masks.numel())
    except MemoryError:
        out["error"] = "MemoryError"
    except Exception as exc:  # an allocation refused deep inside torch surfaces as a RuntimeError
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    out.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
               peak_above=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss,
               anon_above=anon.stop() - base_anon)
    if args.cgroup:
        out["cgroup_peak"] = int(Path(args.cgroup, "memory.max_usage_in_bytes").read_text())
    print(json.dumps(out))


def build(folder: Path, args) -> dict:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(num_hidden_layers=args.layers, hidden_size=args.hidden,
                                   intermediate_size=args.hidden * 11 // 4, num_attention_heads=args.hidden // 64,
                                   num_key_value_heads=args.hidden // 64, vocab_size=args.vocab,
                                   max_position_embeddings=args.seq)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder, max_shard_size="64MB")
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    layers = model.model.layers
    total = nbytes(model.parameters())
    return {"model": total, "block": max(nbytes(b.parameters()) for b in layers),
            "outside": total - nbytes(p for b in layers for p in b.parameters()),
            "masks": sum(p.numel() for b in layers for n, p in b.named_parameters() if n.endswith("proj.weight")),
            "cache": args.samples * args.seq * args.hidden * 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--limit-fraction", type=float, default=0.5, help="the cap, as a fraction of the model's bytes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=["memory", "disk"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--cgroup", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="disk-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp) / "model"
        sizes = build(folder, args)
        cap = int(sizes["model"] * args.limit_fraction)
        runs: dict[str, list[dict]] = {"memory": [], "disk": []}
        capped = True
        for _ in range(args.repeats):
            for side in runs:  # interleaved; a fresh cgroup each time (its peak counter starts at zero)
                evict(folder)
                group = make_cgroup(cap)
                capped = capped and group is not None
                cmd = [sys.executable, __file__, "--child", side, "--folder", str(folder), "--method", args.method,
                       "--samples", str(args.samples), "--seq", str(args.seq), "--vocab", str(args.vocab),
                       "--threads", str(args.threads)] + (["--cgroup", str(group)] if group else [])
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [l for l in res.stdout.splitlines() if l.startswith("{")]
                why = "killed at the cap (OOM)" if res.returncode == -9 else f"exit {res.returncode}"
                runs[side].append(json.loads(line[-1]) if line else {"side": side, "ok": False, "error": why})
                if group is not None:
                    group.rmdir()
    mib = lambda b: f"{b / 2 ** 20:,.0f}"  # noqa: E731
    print(f"# Calibration from disk, {args.method} at 50 %, {datetime.date.today()}, {platform.machine()}, "
          f"threads {args.threads}")
    print(f"\nmodel {args.layers} x {args.hidden} (float32): {mib(sizes['model'])} MiB; cap above the imports "
          f"{mib(cap) + ' MiB' if capped else 'NONE (no memory cgroup could be made here)'} ({args.limit_fraction:g}x); largest block {mib(sizes['block'])}, outside the blocks "
          f"{mib(sizes['outside'])}, masks {mib(sizes['masks'])}, cached inputs {mib(sizes['cache'])} MiB; floor "
          f"(block + outside + masks + cache) {mib(sizes['block'] + sizes['outside'] + sizes['masks'] + sizes['cache'])} MiB\n")
    print("| side | finished under the cap | peak private (anonymous) memory above imports, MiB (min / median) | "
          "/ model | peak RSS above imports (mapped file pages included), MiB | cgroup peak, MiB (page cache "
          "included) | wall s (min / median) | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for side, rs in runs.items():
        ok = [r for r in rs if r.get("ok")]
        if not ok:
            print(f"| {side} | no ({rs[0].get('error')}) | - | - | - | - | - | - |")
            continue
        peaks, walls = [r["anon_above"] for r in ok], [r["wall"] for r in ok]
        print(f"| {side} | {len(ok)}/{len(rs)} | {mib(min(peaks))} / {mib(statistics.median(peaks))} | "
              f"{min(peaks) / sizes['model']:.2f}x | {mib(min(r['peak_above'] for r in ok))} | "
              f"{mib(min(r.get('cgroup_peak', 0) for r in ok))} | "
              f"{min(walls):.1f} / {statistics.median(walls):.1f} | "
              f"{min(r['cpu'] for r in ok):.1f} |")


if __name__ == "__main__":
    main()
