"""Mask similarity, structure and stability analysis, and the compare report."""
import csv

import pytest
import torch

from prunelab.analysis.masks import (jaccard, overlap, p_group_empty, random_jaccard, similarity, structure,
                                     weight_distance)
from prunelab.cli import main
from prunelab.experiment import Runner, load_recipe, run_dir_for


def test_jaccard_on_hand_made_masks():
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    assert jaccard(a, b) == 2 / 4 and jaccard(a, a) == 1.0
    assert jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    s = similarity({"x": a, "y": torch.ones(2, dtype=torch.bool)}, {"x": b, "y": torch.ones(2, dtype=torch.bool)})
    assert s["jaccard"] == pytest.approx(4 / 6) and s["layers"]["x"]["jaccard"] == 0.5
    assert s["layers"]["y"]["random"] == 1.0
    assert overlap({"x": a}, {"x": a & b}) == 1.0
    with pytest.raises(ValueError):
        jaccard(a, b[:3])


@pytest.mark.parametrize("n,k1,k2", [(50, 10, 30), (1000, 300, 500), (200, 190, 5)])
def test_random_expectation_matches_simulation(n, k1, k2):
    g = torch.Generator().manual_seed(0)
    sims = []
    for _ in range(4000):
        a = torch.zeros(n, dtype=torch.bool)
        b = torch.zeros(n, dtype=torch.bool)
        a[torch.randperm(n, generator=g)[:k1]] = True
        b[torch.randperm(n, generator=g)[:k2]] = True
        sims.append(jaccard(a, b))
    sd = torch.tensor(sims).std().item() / len(sims) ** 0.5
    assert random_jaccard(n, k1, k2) == pytest.approx(sum(sims) / len(sims), abs=4 * sd + 1e-9)


def test_structure_counts_on_hand_made_conv_masks():
    m = torch.ones(4, 3, 2, 2, dtype=torch.bool)
    m[0] = False            # one empty filter
    m[:, 1] = False         # one empty input channel (in every filter)
    m[2, 2] = False         # one more empty kernel
    st = structure({"conv": m, "fc": torch.ones(3, 3, dtype=torch.bool)})
    assert list(st) == ["conv"]
    s = st["conv"]
    assert s["filters_empty"] == 0.25 and s["channels_empty"] == 1 / 3
    assert s["kernels_empty"] == (3 + 3 + 1) / 12  # filter 0 (3), channel 1 in filters 1-3 (3), kernel (2, 2)
    assert s["kernels_random"] == pytest.approx(p_group_empty(48, int(m.sum()), 4))
    assert p_group_empty(10, 3, 2) == pytest.approx((7 * 6) / (10 * 9))  # C(8,3)/C(10,3)
    assert p_group_empty(10, 9, 2) == 0.0


def test_weight_distance():
    w = {"a": torch.tensor([1.0, 2.0, 3.0])}
    v = {"a": torch.tensor([1.0, 2.0, 0.0])}
    m = {"a": torch.tensor([True, True, False])}
    assert weight_distance(w, v, m) == 0.0
    assert weight_distance({"a": torch.tensor([2.0, 2.0, 9.0])}, v, m) == pytest.approx(1 / 5 ** 0.5)


def test_compare_writes_the_mask_report(tmp_path, capsys):
    dirs = []
    for crit in ("magnitude", "random"):
        for seed in (0, 1):
            over = [f"prune.method={{name: imp, rewind: init, criterion: {crit}}}", "train.epochs=1",
                    "prune.schedule.rounds=2", "prune.retrain.epochs=1", "prune.sparsity=0.8", f"seed={seed}"]
            recipe = load_recipe("quickstart", over)
            Runner(recipe, run_dir_for(recipe, tmp_path / "runs"), progress=False, log=lambda m: None).run()
            dirs.append(str(run_dir_for(recipe, tmp_path / "runs")))
    out = tmp_path / "report"
    assert main(["compare", *dirs, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Jaccard similarity of final masks" in text and "(same, other seeds)" in text
    for f in ("jaccard.csv", "jaccard.png", "jaccard_random.csv", "similarity.md", "accuracy.png", "structure.csv",
              "stability.csv", "stability.png", "rethinking.md"):
        assert (out / f).is_file(), f
    rows = list(csv.reader(open(out / "jaccard.csv")))
    assert len(rows) == 5 and all(float(rows[i][i]) == 1.0 for i in range(1, 5))
    stab = list(csv.reader(open(out / "stability.csv")))
    assert float(stab[1][2]) == 1.0  # magnitude IMP masks are nested: round 2 inside round 1
