"""Regenerate benchmarks/results/: every benchmark with the command its README row names.

Each entry runs in its own process with the thread count fixed by its arguments (OMP_NUM_THREADS follows),
one after another (never two at once: they would time each other). Scripts that print a table have it
written to their results file with a header naming the command, the machine, its load before the run and
the date; a file is replaced only when its benchmark succeeded (the old one stays otherwise).

    python benchmarks/run_all.py                  # the performance set (about 30-40 min on 2 cores)
    python benchmarks/run_all.py --all            # also the accuracy studies (many hours, MNIST data needed)
    python benchmarks/run_all.py --only compact_io,structured
    python benchmarks/run_all.py --list
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name: (arguments, results file it is printed to (None: the script writes its own files), set, rough time)
BENCHMARKS = {
    "global_selection": (["--repeats", "3", "--threads", "1"], "global_selection.md", "perf", "12 min"),
    "structured": (["--repeats", "3"], "structured.md", "perf", "8 min"),
    "sparse_inference": (["--threads", "1"], "sparse_inference.md", "perf", "4 min"),
    "compact_io": (["--repeats", "5"], "compact_io.md", "perf", "3 min"),
    "quickstart_load": (["--repeats", "3"], "quickstart_load.md", "perf", "8 min"),
    "import_time": (["--repeats", "5"], "import_time.md", "perf", "1 min"),
    "overhead": ([], "overhead.md", "perf", "3 min"),
    "foreign_models": (["--threads", "1", "--repeats", "3", "--trace-seconds", "30"], "foreign_models.md", "perf",
                       "45 min"),
    "trainer_loop": (["--threads", "1"], "trainer_loop.md", "perf", "2 min"),
    "calibration": (["--threads", "1", "--repeats", "1"], "calibration.md", "perf", "15 min"),
    "calibration_memory": (["--threads", "1", "--layers", "4", "--sequences", "8", "--tokens", "512"],
                           "calibration_memory.md", "perf", "20 min"),
    "crash_resume": (["--kills", "20"], "crash_resume.md", "perf", "10 min"),
    "deploy": ([], None, "perf", "3 min"),  # random init here; the README's row passes trained dense weights
    "one_shot": (["--model", "lenet5", "--dataset", "mnist", "--seeds", "0,1,2", "--threads", "1", "--recipes"],
                 "one_shot_lenet5_mnist.md", "accuracy", "2 h"),
    "lm_one_shot": (["--draws", "0,1,2", "--threads", "1"], "lm_one_shot.md", "accuracy", "1 h"),
    "distill_overhead": (["--threads", "1", "--steps", "10", "--repeats", "3"], "distill_overhead.md", "perf", "2 min"),
    "structured_lm": (["--threads", "1"], "structured_lm.md", "accuracy", "25 min"),
    "calibration_precision": (["--draws", "0", "--threads", "1"], "calibration_precision.md", "accuracy", "40 min"),
    "drop_vs_magnitude": (["--model", "lenet5"], None, "accuracy", "6 h"),
    "campfire_lenet5": (["--seeds", "0,1,2"], None, "accuracy", "3 h"),
    "rethinking": (["--family", "lenet5", "--seeds", "0,1,2"], None, "accuracy", "4 h"),
    "pca_vs_magnitude": (["--model", "lenet300_100"], None, "accuracy", "1 h"),
    "mask_study": (["--seeds", "0,1,2"], None, "accuracy", "1 h"),
    "l1_presets": ([], "l1_presets.md", "accuracy", "1 min"),
    "recovery_lm": (["--threads", "1"], "recovery_lm.md", "accuracy", "65 min"),
}


def _threads(args: list[str]) -> str:
    return args[args.index("--threads") + 1] if "--threads" in args else "1"


def _header(cmd: list[str]) -> str:
    load = os.getloadavg()[0]
    return (f"<!-- `{' '.join(cmd)}` on {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
            f"{platform.machine()}, load average {load:.2f} before the run, {datetime.date.today()} -->\n\n")


def run(name: str) -> bool:
    args, out, _, _ = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / f"{name}.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": _threads(args)}
    shown = ["python", f"benchmarks/{name}.py", *args]
    print(f"== {name}: {' '.join(shown)}", flush=True)
    t0 = time.perf_counter()
    header = _header(shown)
    res = subprocess.run(cmd, cwd=HERE.parent, env=env, text=True, stdout=subprocess.PIPE if out else None)
    if res.returncode != 0:
        print(f"   failed (exit {res.returncode}); {out or 'its results'} left as they were", flush=True)
        return False
    if out:
        tmp = RESULTS / f".{out}.tmp"
        tmp.write_text(header + res.stdout)
        tmp.replace(RESULTS / out)
    print(f"   done in {time.perf_counter() - t0:.0f} s -> benchmarks/results/{out or '(its own files)'}", flush=True)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also the accuracy studies (hours)")
    ap.add_argument("--only", help="comma-separated benchmark names (see --list)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for name, (args, out, kind, rough) in BENCHMARKS.items():
            print(f"{name:18s} {kind:8s} {rough:>7s}  python benchmarks/{name}.py {' '.join(args)}")
        return
    names = a.only.split(",") if a.only else [n for n, b in BENCHMARKS.items() if a.all or b[2] == "perf"]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"run_all: unknown benchmark {unknown[0]!r}; --list shows them")
    RESULTS.mkdir(exist_ok=True)
    failed = [n for n in names if not run(n)]
    if failed:
        sys.exit(f"run_all: {len(failed)} failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
