"""DropPruning: the birth-death process on the mask, its clean-up, revival and determinism."""
import json

import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.engine.criteria import Context
from prunelab.experiment import Runner, load_recipe
from prunelab.engine.selection import Drop, drop_rate, expected_density


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(200, 150), nn.ReLU(), nn.Linear(150, 100))


def test_density_follows_the_fixed_point_recursion():
    q, p_out, p_in = 0.2, 0.5, 0.05
    pruner = Pruner(_mlp(), {"name": "drop_pruning", "q": q, "p_out": p_out, "p_in": p_in}, schedule="manual",
                    sparsity=0.9, seed=0)
    d = 1.0
    for _ in range(40):
        pruner.prune(0.5, final=False)
        d = d * (1 - q * p_out) + (1 - d) * p_in
        assert pruner.masks.density() == pytest.approx(d, abs=0.01)
    assert pruner.masks.density() == pytest.approx(p_in / (p_in + q * p_out), abs=0.02)  # at the fixed point


def test_derived_p_in_and_annealing():
    sel = Drop(q=0.2, p_out=0.5)
    assert sel.p_in_at(Context(final_sparsity=0.93)) == pytest.approx(0.2 * 0.5 * 0.07 / 0.93)
    ann = Drop(q=0.2, p_out=0.5, p_in=0.1, anneal_rounds=4)
    ps = [ann.p_in_at(Context(event=e, total_events=10, final_sparsity=0.9)) for e in range(10)]
    assert ps[:5] == [0.1] * 5 and ps[5:] == pytest.approx([0.075, 0.05, 0.025, 0.0, 0.0])  # last: clean-up
    derived = Drop(q=None, p_out=0.9)
    ctx = Context(total_events=20, final_sparsity=0.99)
    a = derived.q_at(ctx) * 0.9
    assert (1 - 0.01) * (1 - a / 0.99) ** 19 == pytest.approx(0.25 * 0.01)  # closed form without annealing


@pytest.mark.parametrize("sparsity", [0.92, 0.99])
def test_derived_rate_lands_above_the_target_with_annealing(sparsity):
    # with p_in annealed to 0 the density keeps falling; the derived rate must still leave the final clean-up
    # 1.25 x the target to prune, not a shortfall to fill with random (zero) weights
    d_star, rounds = 1 - sparsity, 12
    assert expected_density(drop_rate(d_star, rounds, 3), d_star, rounds, 3) == pytest.approx(1.25 * d_star)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 100))
    pruner = Pruner(model, {"name": "drop_pruning", "q": None, "p_out": 0.9, "anneal_rounds": 3, "scope": "global"},
                    schedule={"name": "iterative", "rounds": rounds}, sparsity=sparsity, seed=0, auto_prune=False)
    assert pruner.planned_events == rounds and pruner.events == 0  # planned by the schedule, not yet pruned
    for event in range(rounds - 1):
        with torch.no_grad():  # stand-in for retraining: new magnitudes every round
            for n, p in pruner.params.items():
                p.add_(torch.randn_like(p) * 0.01).mul_(pruner.masks[n])
        pruner.prune_event(event)
    assert pruner.masks.density() == pytest.approx(1.25 * d_star, rel=0.08)
    pruner.prune_event(rounds - 1)
    assert pruner.history[-1]["revived"] == 0 and pruner.masks.density() == pytest.approx(d_star, abs=1e-4)


def test_final_clean_up_is_exact_and_revives_when_short():
    pruner = Pruner(_mlp(), {"name": "drop_pruning", "q": 0.5, "p_out": 1.0, "p_in": 0.0}, schedule="manual",
                    sparsity=0.7)
    for _ in range(3):
        pruner.prune(0.5, final=False)  # density 1/8 after three halvings, below the target 0.3
    assert pruner.masks.density() == pytest.approx(0.125, abs=0.01)
    pruner.prune(0.7)  # the final event: exactly the target in every tensor
    for m in pruner.masks.values():
        assert int(m.sum()) == int(0.3 * m.numel() + 0.5)


def test_revived_weights_restart_with_zero_optimizer_state():
    for revive_value in ("zero", "pruned"):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        pruner = Pruner(model, {"name": "drop_pruning", "q": 0.5, "p_out": 1.0, "p_in": 0.5,
                                "revive_value": revive_value}, schedule="manual", sparsity=0.9)
        x, y = torch.randn(32, 200), torch.randint(0, 100, (32,))
        def train_step():
            opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step(); pruner.step(opt)
        train_step()
        pruner.prune(0.5, opt, final=False)
        old = pruner.masks.clone()
        train_step()
        pruner.prune(0.5, opt, final=False)
        assert pruner.history[-1]["revived"] > 0
        for n, p in pruner.params.items():
            back = ~old[n] & pruner.masks[n]
            assert (opt.state[p]["momentum_buffer"][back] == 0).all()
            if revive_value == "zero":
                assert (p[back] == 0).all()
        # "pruned": a weight revived in this event was pruned in the first event, with its value then
        rec = pruner.history[-1]
        assert rec["dropped"] > 0 and rec["revived_alive"] == rec["revived"]
        if revive_value == "pruned":
            assert any((p[~old[n] & pruner.masks[n]] != 0).any() for n, p in pruner.params.items())


def test_same_seed_same_masks_and_global_scope():
    def masks(seed, scope="layer"):
        p = Pruner(_mlp(), {"name": "drop_pruning", "scope": scope}, schedule="manual", sparsity=0.8, seed=seed)
        for _ in range(4):
            p.prune(0.5, final=False)
        return p.masks
    assert masks(1).equal(masks(1)) and not masks(1).equal(masks(2))
    g = masks(1, "global")
    assert g.density() == pytest.approx(0.9 ** 4, abs=0.02)


@pytest.mark.parametrize("params,needle", [
    ({"p_out": 1.5}, "p_out"), ({"p_in": -0.1}, "p_in"), ({"q": 0}, "q must be in (0, 1]"),
    ({"q": 1.2}, "q must be in (0, 1]"), ({"scope": "net"}, "scope"), ({"candidates": "all"}, "candidates"),
    ({"revive_value": "one"}, "revive_value"), ({"anneal_rounds": -1}, "anneal_rounds"),
])
def test_bad_parameters_are_rejected(params, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        Pruner(_mlp(), {"name": "drop_pruning", **params}, sparsity=0.5)


def test_recipe_run_records_round_statistics(tmp_path):
    recipe = load_recipe("quickstart", ["train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=4",
                                        "prune.method={name: drop_pruning, q: null, p_out: 0.9}", "prune.sparsity=0.9",
                                        "prune.final_epochs=2"])
    s = Runner(recipe, tmp_path / "r", progress=False, log=lambda m: None).run()
    assert s["sparsity_prunable"] == pytest.approx(0.9, abs=1e-3)
    records = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    prunes = [r["prune"] for r in records if "prune" in r]
    assert len(prunes) == 4 and all({"dropped", "revived", "revived_alive", "density"} <= set(p) for p in prunes)
    assert prunes[-1]["density"] == pytest.approx(0.1, abs=1e-3)
    epochs = [r["stage"] for r in records if "epoch" in r]
    assert epochs.count("round_03") == 1 and epochs.count("round_04") == 2  # final_epochs for the last round


def test_revival_record_carries_over_between_round_stages(tmp_path):
    from safetensors.torch import load_file

    recipe = load_recipe("quickstart", ["train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=4",
                                        "prune.method={name: drop_pruning, q: 0.5, p_out: 0.9, p_in: 0.3}",
                                        "prune.sparsity=0.9"])
    Runner(recipe, tmp_path / "r", progress=False, log=lambda m: None).run()
    stages = tmp_path / "r" / "stages"
    ever = [{k: v for k, v in load_file(stages / f"round_0{i}" / "method_state.safetensors").items()
             if k.startswith("ever_revived:")} for i in (2, 3)]
    masks = load_file(stages / "round_03" / "masks.safetensors")
    records = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    prunes = [r["prune"] for r in records if "prune" in r]
    for key, before in ever[0].items():  # the record of round 2 is part of round 3's: it was carried over
        assert bool((ever[1][key] | ~before).all())
    alive = sum(int((t & masks[k.split(":", 1)[1]].bool()).sum()) for k, t in ever[1].items())
    assert prunes[2]["revived_alive"] == alive > prunes[2]["revived"]


def test_dense_training_is_shared_between_runs(tmp_path):
    logs = []
    base = ["train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=1"]
    a = Runner(load_recipe("quickstart", base), tmp_path / "a", progress=False, log=logs.append).run()
    b = Runner(load_recipe("quickstart", base + ["prune.sparsity=0.5"]), tmp_path / "b", progress=False,
               log=logs.append).run()
    assert any("reused the identical dense training" in line for line in logs)
    assert a["dense_acc"] == b["dense_acc"]
    assert (tmp_path / "a/stages/dense/model.safetensors").read_bytes() == \
        (tmp_path / "b/stages/dense/model.safetensors").read_bytes()


def test_han_style_candidates_below_lambda_times_rms():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.2, 1.0, -2.0]]))
    pruner = Pruner(model, {"name": "drop_pruning", "candidates": "std", "lam": 0.5, "p_out": 1.0, "p_in": 0.0},
                    schedule="manual", sparsity=0.5)
    pruner.prune(0.5, final=False)
    # rms of |w| = sqrt((0.01 + 0.04 + 1 + 4) / 4) = 1.124; 0.5 * rms = 0.562: the two small weights go
    assert pruner.masks["0.weight"].tolist() == [[False, False, True, True]]


def test_curve_runs_method_and_baseline_at_equal_budget(tmp_path, capsys):
    import csv

    from prunelab.cli import main

    out = tmp_path / "report" / "c"
    args = ["curve", "quickstart", "--compressions", "2,5", "--seeds", "2", "--jobs", "2", "--threads", "1",
            "--set", "prune.method={name: drop_pruning, q: null, p_out: 0.9}", "--set", "train.epochs=1",
            "--set", "prune.schedule.rounds=2", "--set", "prune.retrain.epochs=1", "--runs-dir", str(tmp_path),
            "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"drop_pruning", "magnitude"}
    for r in rows:
        assert float(r["compression_prunable"]) == pytest.approx(float(r["target_compression"]), rel=1e-3)
    for seed in "01":  # every method and compression of a seed starts from that seed's one dense model
        assert len({r["dense_acc"] for r in rows if r["seed"] == seed}) == 1
    md = open(f"{out}.md").read()
    assert md.count("| 2x |") == 2 and md.count("| 5x |") == 2 and "Command: `prunelab curve quickstart" in md
    assert (out.parent / "c.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args) == 2  # the outputs exist: replaced only when asked
    assert "c.md already exists; add --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0  # finished runs are read back, not rerun
    assert "0 to run" in capsys.readouterr().out
    assert md == open(f"{out}.md").read()


@pytest.mark.parametrize("extra, needle", [(["--compressions", "1,10"], "above 1"),
                                           (["--compressions", "ten"], "comma-separated numbers"),
                                           (["--baseline", "magnitude"], "LABEL=METHOD"),
                                           (["--baseline", "magnitude={name: random}"], "is the recipe's own method")])
def test_curve_bad_input_is_one_sentence(tmp_path, capsys, extra, needle):
    from prunelab.cli import main

    assert main(["curve", "quickstart", "--runs-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_curve_default_baseline_beside_a_recipe_of_the_same_name(tmp_path):
    """The default baseline (global magnitude) is the quickstart's own method: the curve is the recipe's points
    alone; beside a per-layer magnitude recipe it keeps its meaning under a label of its own."""
    from prunelab.experiment.curve import curve_points, parse_baselines

    same = curve_points("quickstart", [2.0], parse_baselines(None), 1, tmp_path)
    assert [p["method"] for p in same] == ["magnitude"]
    other = curve_points("quickstart", [2.0], parse_baselines(None), 1, tmp_path, ["prune.method=magnitude"])
    assert [p["method"] for p in other] == ["magnitude", "magnitude_global"]
