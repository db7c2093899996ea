"""Crash and resume: a small recipe SIGKILLed at N random moments, resumed each time, against an uninterrupted run.

    python benchmarks/crash_resume.py --kills 20 > benchmarks/results/crash_resume.md

The recipe (default: the quickstart with 3 rounds) runs once uninterrupted as the reference; then a second runs
folder is started, killed with SIGKILL at a moment drawn uniformly over the reference's wall time (scaled by
``--spread``: a resumed attempt skips finished stages, so late moments often find it done), restarted, and so
on until ``--kills`` kills have happened, then left to finish. Every file of the two run folders is compared:
tensors files byte for byte, JSON records and logs after removing the wall-clock fields (``seconds``,
``wall_seconds``) and the run folder's own path. Also SIGINT: one line on stderr, exit 130, then resumable.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=1.0, help="kill moments drawn over this fraction of a run")
    ap.add_argument("overrides", nargs="*", default=["prune.schedule.rounds=3", "prune.retrain.epochs=2"])
    a = ap.parse_args()
    from prunelab.experiment.verify import comparable_contents as artifacts

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = lambda runs: [sys.executable, "-m", "prunelab", "run", "quickstart", *a.overrides,  # noqa: E731
                            "--runs-dir", str(runs), "--no-progress"]
        t0 = time.time()
        subprocess.run(cmd(Path(tmp) / "ref"), check=True, capture_output=True, env=env)
        whole = time.time() - t0
        rng = random.Random(a.seed)
        kills, attempts, moments = 0, 0, []
        while True:
            attempts += 1
            proc = subprocess.Popen(cmd(Path(tmp) / "crash"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=env)
            moment = rng.uniform(0, a.spread * whole)
            try:
                proc.wait(timeout=moment if kills < a.kills else 600)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                moments.append(moment)
                continue
            if proc.returncode != 0:
                sys.exit(f"a resumed attempt failed: {proc.stderr.read().decode()[-400:]}")
            if kills >= a.kills:
                break
        ref = artifacts(next((Path(tmp) / "ref").glob("quickstart-*")))
        got = artifacts(next((Path(tmp) / "crash").glob("quickstart-*")))
        differing = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k))
        # SIGINT: one line, exit 130, and the run resumes to the same result
        # a process started in the background by a shell script inherits SIGINT ignored: restore the default
        proc = subprocess.Popen(cmd(Path(tmp) / "int"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(whole / 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        sigint_lines = err.decode().strip().splitlines()
        resumed = subprocess.run(cmd(Path(tmp) / "int"), capture_output=True, env=env).returncode
        after_int = artifacts(next((Path(tmp) / "int").glob("quickstart-*")))
        int_differing = sorted(k for k in set(ref) | set(after_int) if ref.get(k) != after_int.get(k))
        same_after_int = not int_differing
    print("# Crash and resume\n")
    print(f"{time.strftime('%Y-%m-%d')}; `prunelab run quickstart {' '.join(a.overrides)}`, 1 thread; uninterrupted "
          f"run {whole:.1f} s wall (process start included).\n")
    print("| check | result |\n|---|---|")
    print(f"| SIGKILL at random moments | {kills} kills over {attempts} attempts (moments "
          f"{min(moments):.1f}-{max(moments):.1f} s), then finished |")
    print(f"| files compared with the uninterrupted run | {len(ref)}: "
          f"{'all identical' if not differing else 'DIFFERENT: ' + ', '.join(differing[:5])} |")
    print(f"| SIGINT | exit {proc.returncode}, {len(sigint_lines)} line on stderr: `{sigint_lines[-1] if sigint_lines else ''}` |")
    print(f"| resumed after SIGINT | exit {resumed}; "
          f"{'identical' if same_after_int else 'DIFFERENT: ' + ', '.join(int_differing[:5])} to the uninterrupted run |")
    print(f"\nCommand: `python benchmarks/crash_resume.py --kills {a.kills} --seed {a.seed}`")
    sys.exit(0 if not differing and same_after_int and proc.returncode == 130 else 1)


if __name__ == "__main__":
    main()
