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


FSDP_RECIPE = """
name: fsdp
data: {name: pystdlib, seq_len: 32, batch_size: 8, test_batch_size: 16, train_tokens: 16384,
       calibration_tokens: 2048, eval_tokens: 2048}
model: {name: "hf:llama", kwargs: {num_hidden_layers: 2, hidden_size: 32, intermediate_size: 48,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 32}}
train: {epochs: 1, optimizer: adamw, lr: 0.003, weight_decay: 0.01}
prune:
  method: magnitude
  sparsity: 0.5
  schedule: {name: oneshot}
  retrain: {max_steps: 4, lr: 0.001, parallel: fsdp}
  distill: {alpha: 0.5, temperature: 2.0}
"""


@pytest.mark.subprocess
def test_fsdp_retraining_on_two_ranks_matches_one_process(tmp_path):
    """Distillation under FSDP2 (student and teacher sharded) on 2 gloo ranks, resumed from a dense stage one
    process wrote, against the same stage in one process: identical masks, weights and Adam state within float
    rounding, and a checkpoint one process loads with its optimizer."""
    import shutil

    import torch

    from prunelab.experiment.checkpoint import load_checkpoint
    from prunelab.experiment.context import RunContext
    from prunelab.masks import Masks

    pytest.importorskip("transformers")
    recipe = tmp_path / "fsdp.yaml"
    recipe.write_text(FSDP_RECIPE)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", str(recipe), "--runs-dir", str(one), "--no-progress"]) == 0
    (run,) = [p for p in one.iterdir() if p.name.startswith("fsdp")]
    shutil.copytree(run / "stages" / "dense", two / run.name / "stages" / "dense")
    shutil.copy(run / "recipe.yaml", two / run.name / "recipe.yaml")
    shutil.copytree(run / "init", two / run.name / "init")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "prunelab", "run", str(recipe), "--runs-dir", str(two),
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-1500:]
    assert "stage dense: done, skipped" in res.stdout
    ctx = RunContext.from_folder(two / run.name)
    (stage,) = [p for p in (run / "stages").iterdir() if p.name.startswith("round")]
    loaded = []
    for root in (run, two / run.name):
        model = ctx.build_model()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        masks, state = load_checkpoint(root / "stages" / stage.name, model, opt, restore_rng=False)
        loaded.append((model.state_dict(), masks, opt.state_dict(), state))
    (w1, m1, o1, s1), (w2, m2, o2, s2) = loaded
    assert isinstance(m2, Masks) and all(torch.equal(m1[n], m2[n]) for n in m1)
    assert s2["distill"] == s1["distill"] and s1["sparsity"] == s2["sparsity"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    for n, m in m2.items():
        assert not w2[n][~m].any()
    for i in o1["state"]:
        torch.testing.assert_close(o2["state"][i]["exp_avg"], o1["state"][i]["exp_avg"], rtol=1e-5, atol=1e-7)
    assert s2["test_loss"] == pytest.approx(s1["test_loss"], rel=1e-4)
