"""Calibration shared by gloo ranks: each rank measures its share of the samples, the statistics are summed, and
every rank decides the masks one process decides from all of them."""
import pytest
import torch


_RANKS = '''
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from prunelab import Pruner


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def prune(method):
    p = Pruner(build(), method, schedule="manual", sparsity=0.5)
    p.calibrate([torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    p.prune(0.5)
    return p


def worker(rank, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    res = {}
    for m in ("wanda", "sparsegpt", "pca"):
        p = prune({"name": m, "samples": 16, "channels": False} if m == "pca" else {"name": m, "samples": 16})
        res[m] = {**p.masks, "samples": torch.tensor(p.history[-1]["calibration_samples"])}
    torch.save(res, out + "/rank%d.pt" % rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
'''


@pytest.mark.subprocess
def test_two_gloo_ranks_with_half_the_samples_each_decide_the_masks_of_one_process(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ranks.py"
    script.write_text(_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    namespace: dict = {}
    exec(compile(_RANKS.split("def worker")[0], "ranks", "exec"), namespace)  # the same model and batches, one process
    for m in ("wanda", "sparsegpt", "pca"):
        spec = {"name": m, "samples": 16, "channels": False} if m == "pca" else {"name": m, "samples": 16}
        one = namespace["prune"](spec).masks
        for r in ranks:
            assert int(r[m].pop("samples")) == 16  # each rank measured 8; the record counts them all
            assert list(r[m]) == list(one) and all(torch.equal(r[m][n], one[n]) for n in one), m
