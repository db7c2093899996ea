"""Crash, interruption, concurrency and file-system failures: a run resumes to the same bytes, and every refusal
is one sentence."""
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.experiment import Runner, load_recipe
from prunelab.experiment.verify import comparable_contents

TINY = ["train.epochs=2", "prune.schedule.rounds=3", "prune.retrain.epochs=1", "prune.sparsity=0.9"]
artifacts = comparable_contents  # every file; records without wall-clock fields


def _cli(runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prunelab", "run", *TINY, "--runs-dir", str(runs), "--no-progress", *extra]


@pytest.mark.subprocess
def test_killed_at_random_moments_a_run_resumes_to_the_same_bytes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    subprocess.run(_cli(tmp_path / "ref"), check=True, capture_output=True, env=env)
    whole = time.time() - t0
    ref = next((tmp_path / "ref").glob("quickstart-*"))
    rng = random.Random(0)
    kills, crash = 0, tmp_path / "crash"
    for _ in range(12):  # SIGKILL each attempt at a random moment (up to 3 times), then let one finish
        started = time.time()
        proc = subprocess.Popen(_cli(crash), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.9) * whole if kills < 3 else 300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-500:]
        if kills:
            break
        # finished before its kill (the reference run was slower, on a machine whose load changed): time this
        # one instead and start over in a fresh folder
        whole, crash = time.time() - started, tmp_path / f"crash{rng.randrange(10 ** 6)}"
    assert kills >= 1
    run = next(crash.glob("quickstart-*"))
    got = artifacts(run)
    assert sum(k.endswith("masks.safetensors") for k in got) == 3 and "summary.json" in got
    assert got == artifacts(ref)


@pytest.mark.subprocess
def test_interrupted_run_says_one_line_exits_130_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = _cli(tmp_path, "train.epochs=150")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    # interrupt in the middle of dense training: once its first epoch is logged (not at the end, where a process
    # already shutting down dies of the signal instead of handling it)
    while not any(f.stat().st_size for f in tmp_path.glob("quickstart-*/stages/dense/metrics.jsonl")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "interrupted; rerun the same command to resume" in lines[0]
    assert not list(tmp_path.glob("quickstart-*/stages/dense/state.json"))  # stopped before the stage ended
    assert subprocess.run(argv, capture_output=True, env=env).returncode == 0


@pytest.mark.subprocess
def test_one_process_per_run_folder_and_a_dead_holder_is_no_obstacle(tmp_path):
    recipe = load_recipe("quickstart", TINY)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'%d' % os.getpid())\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"), str(run / ".lock")], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    from prunelab import ConfigError

    with pytest.raises(ConfigError, match=f"another prunelab process \\(PID {holder.pid}\\) is running"):
        Runner(recipe, run, progress=False, log=lambda m: None).run()
    holder.kill()  # kill -9: the kernel drops its lock, no stale lock file to clean
    holder.wait()
    assert Runner(recipe, run, progress=False, log=lambda m: None, share_dense=False).run()["pruned_acc"] > 0


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_runs_folder_is_one_sentence_and_loses_nothing(tmp_path, monkeypatch, capsys, code):
    import prunelab.io as io

    runs = tmp_path / "runs"
    assert main(["run", *TINY, "--runs-dir", str(runs), "--no-progress", "--stop-after", "round_01"]) == 0
    run = next(runs.glob("quickstart-*"))
    before = artifacts(run)
    real_fsync = io.os.fsync

    def failing(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(io.os, "fsync", failing)
    capsys.readouterr()
    assert main(["run", *TINY, "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write {run}" in err[0] and os.strerror(code) in err[0]
    after = artifacts(run)
    assert {k: after.get(k) for k in before} == before  # every earlier artifact intact (the failed stage's log
    assert not (run / "stages" / "round_02" / "state.json").exists()  # may stay; its checkpoint never completed)
    assert not [f for f in run.rglob(".*.tmp")]
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert main(["run", *TINY, "--runs-dir", str(runs), "--no-progress"]) == 0


@pytest.mark.subprocess
def test_two_runs_sharing_a_dense_training_take_turns(tmp_path):
    """Started together, two recipes that differ only in pruning: one trains the dense model, the other waits
    for it and reuses it; both finish."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_cli(tmp_path, f"prune.sparsity={s}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env) for s in (0.8, 0.9)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode()[-300:] for _, e in outs]
    logs = [o.decode() for o, _ in outs]
    assert sum("reused the identical dense training" in log for log in logs) == 1
    dense = [f.read_bytes() for f in sorted(tmp_path.glob("quickstart-*/stages/dense/model.safetensors"))]
    assert len(dense) == 2 and dense[0] == dense[1]


def test_streamed_safetensors_writes_the_deterministic_bytes_and_keeps_the_old_file_on_failure(tmp_path,
                                                                                               monkeypatch):
    import torch

    from prunelab import io

    g = torch.Generator().manual_seed(0)
    tensors = {"b": torch.randn(5, generator=g), "a": torch.randn(3, generator=g), "c": torch.arange(4),
               "mask": torch.ones(3, dtype=torch.bool), "empty": torch.zeros(0), "h": torch.randn(7).half(),
               "bf": torch.randn(2).bfloat16(), "idx": torch.arange(3, dtype=torch.int16)}
    for meta in ({"y": "1", "x": "2", "sha256": "0" * 64, "é": "ü"}, None):
        io.atomic_write_safetensors(tmp_path / "f", tensors, meta)
        assert (tmp_path / "f").read_bytes() == io.safetensors_bytes(tensors, meta)
    before = (tmp_path / "f").read_bytes()

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError):
        io.atomic_write_safetensors(tmp_path / "f", {"x": torch.ones(2)})
    assert (tmp_path / "f").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
