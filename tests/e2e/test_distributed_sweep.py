"""torchrun / DDP with gloo on CPU (2 processes spawned by the test), and sweeps."""
import json
import os
import socket
import subprocess
import sys

import pytest

from prunelab.cli import main
from prunelab.experiment.sweep import expand_grid, split_values
from prunelab.errors import ConfigError

TINY = ["train.epochs=2", "prune.schedule.rounds=3", "prune.retrain.epochs=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["{name: drop_pruning, p_out: 0.9}", "{name: magnitude, allocation: global}",
                                    "{name: sparsegpt, samples: 64}"])  # calibrated: the same data on both ranks
@pytest.mark.subprocess
def test_two_gloo_processes_hold_identical_masks_and_rank0_writes(tmp_path, method):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "prunelab", "run", "quickstart", f"prune.method={method}", *TINY,
           "--runs-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # the ranks' own messages come before torchrun's report: show both ends
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-1500:]
    assert res.stdout.count("stage dense: finished") == 1  # rank 0 alone prints
    (run,) = [p for p in tmp_path.iterdir() if p.name.startswith("quickstart")]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    prunes = [l for l in lines if "prune" in l]
    assert len(prunes) == 3
    for rec in prunes:  # every pruning round: both ranks' masks hashed identical
        d = rec["rank_mask_digests"]
        assert len(d) == 2 and d[0] == d[1]
    dense_epochs = [l for l in lines if l.get("stage") == "dense" and "epoch" in l]
    assert [l["epoch"] for l in dense_epochs] == [1, 2]  # one writer: no duplicated lines
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sparsity_prunable"] == pytest.approx(0.95, abs=1e-3)


def test_grid_expansion():
    assert split_values("0.9,{name: imp, rewind: init},[1, 2]") == ["0.9", "{name: imp, rewind: init}", "[1, 2]"]
    pts = expand_grid(["a=1,2", "b=x,y"], seeds=2)
    assert len(pts) == 8 and pts[0] == ["a=1", "b=x", "seed=0"] and pts[-1] == ["a=2", "b=y", "seed=1"]
    for bad in (["a"], ["=1"], ["a=1,"], ["a={x: 1"]):
        with pytest.raises(ConfigError):
            expand_grid(bad, 1)


def test_sweep_runs_skips_finished_and_tabulates(tmp_path, capsys):
    args = ["sweep", "quickstart", "--grid", "prune.sparsity=0.8,0.9", "--set", "train.epochs=1",
            "--set", "prune.schedule.rounds=1", "--set", "prune.retrain.epochs=1", "--seeds", "2", "--jobs", "2",
            "--runs-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 runs: 0 already finished, 4 to run" in out
    assert "| prune.sparsity=0.8 | 2 |" in out and "| prune.sparsity=0.9 | 2 |" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 runs: 4 already finished, 0 to run" in out and "skipped (finished before)" in out
    assert main(args[:-2] + ["--runs-dir", str(tmp_path), "--print-commands"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 4 and cmds[0].startswith("prunelab run quickstart train.epochs=1")
    assert main(["sweep", "quickstart", "--grid", "prune.sparsity=1.5", "--runs-dir", str(tmp_path)]) == 2
