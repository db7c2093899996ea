"""One-shot pruning from calibration data: streamed input statistics and Wanda."""
import copy
import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.calibration import input_stats


def test_input_statistics_stream_to_the_closed_form():
    torch.manual_seed(0)
    lin, conv = nn.Linear(5, 3), nn.Conv2d(2, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 16, 5), nn.ReLU(), lin)
    batches = [torch.randn(3, 2, 4, 4) for _ in range(3)]
    stats = input_stats(model, {"c": conv.weight, "l": lin.weight}, batches, samples=7, gram=True)
    xs = torch.cat(batches)[:7].double()  # 7 samples: the third batch is cut to one
    cols = nn.functional.unfold(xs, 3, padding=1).transpose(1, 2).reshape(-1, 18)
    # a float32 model: each batch's products in float32, so float32's precision against the float64 closed form
    assert stats["c"].rows == 7 * 16 and torch.allclose(stats["c"].gram.double(), cols.T @ cols, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        h = model[:4].double()(xs)
    assert torch.allclose(stats["l"].sq.double(), h.square().sum(0), rtol=1e-5, atol=1e-5) and stats["l"].rows == 7


def test_wanda_keeps_what_a_hand_computation_keeps():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-4.0, 1.0, 0.1, 2.0]])
    lin, lin2 = nn.Linear(4, 2, bias=False), nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w), lin2.weight.copy_(w)
    x = torch.tensor([[3.0, 1.0, 0.1, 2.0], [4.0, 0.0, 0.2, 1.0]])  # column norms 5, 1, 0.2236, 2.236
    p = Pruner(nn.Sequential(lin), "wanda", sparsity=0.5, schedule="manual")
    p.calibrate([x])
    p.prune(0.5)
    # scores: row 0: 5, 2, 0.67, 1.12 -> keep 0, 1; row 1: 20, 1, 0.022, 4.47 -> keep 0, 3
    assert p.masks["0.weight"].tolist() == [[True, True, False, False], [True, False, False, True]]
    # magnitude alone keeps columns 1, 2 in row 0: the inputs changed the decision
    mag = Pruner(nn.Sequential(lin2), {"name": "magnitude", "granularity": "row"}, sparsity=0.5)
    assert mag.masks["0.weight"].tolist() == [[False, True, True, False], [True, False, False, True]]


def test_wanda_on_token_ids_and_two_four():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    p = Pruner(model, {"name": "wanda", "granularity": "nm", "samples": 6}, schedule="manual")
    p.calibrate([torch.randint(0, 30, (4, 5)) for _ in range(2)])
    p.prune(0.5)
    for m in p.masks.values():
        assert (m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all()


def test_calibrated_methods_say_what_they_miss():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"puts at construction \(step 0\): in a recipe use schedule oneshot"):
        Pruner(model, "wanda", sparsity=0.5)  # one shot at step 0, before any calibrate() could happen
    p = Pruner(model, "wanda", sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="needs calibration data"):
        p.prune(0.5)
    with pytest.raises(ConfigError, match="calibration data is empty"):
        p.calibrate([])
    p.calibrate([torch.randn(2, 7)])  # 7 features for a layer of 4
    with pytest.raises(ConfigError, match="the model rejected the calibration inputs"):
        p.prune(0.5)
    reflected = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(ConfigError, match=r"cannot observe the inputs of 0.weight \(transposed convolutions, padding"):
        q = Pruner(reflected, "wanda", sparsity=0.5, schedule="manual")
        q.calibrate([torch.randn(2, 4, 3, 3)])
        q.prune(0.5)
    projected = nn.Sequential(nn.LSTM(8, 8, proj_size=4, batch_first=True))
    with pytest.raises(ConfigError, match="LSTM with proj_size is not supported"):
        q = Pruner(projected, "wanda", sparsity=0.5, schedule="manual", targets={"exclude": ["*weight_hr*"]})
        q.calibrate([torch.randn(2, 3, 8)])
        q.prune(0.5)
    decoder = nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)  # cross-attention: no exclude needed
    for method in ("wanda", "sparsegpt"):
        ok = Pruner(decoder, method, sparsity=0.5, schedule="manual")
        ok.calibrate([{"tgt": torch.randn(2, 3, 8), "memory": torch.randn(2, 5, 8)}])
        assert ok.prune(0.5).sparsity() == pytest.approx(0.5)


def test_attention_projections_see_their_own_inputs():
    """in_proj sees the query of a self-attention call; out_proj the concatenated heads, which MHA multiplies
    itself: checked against (output - bias) W_o^-T, computed by hand from the module's own output."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 2, batch_first=True).double()
    x = torch.randn(3, 4, 6, dtype=torch.double)
    model = _SelfAttention(mha)
    stats = input_stats(model, {"mha.in_proj_weight": mha.in_proj_weight, "mha.out_proj.weight": mha.out_proj.weight},
                        [x], samples=3, gram=True)
    rows = x.reshape(-1, 6)
    assert torch.allclose(stats["mha.in_proj_weight"].gram, rows.T @ rows)
    with torch.no_grad():
        out = mha(x, x, x, need_weights=False)[0].reshape(-1, 6)
    heads = (out - mha.out_proj.bias) @ torch.linalg.inv(mha.out_proj.weight.detach().T)
    assert stats["mha.out_proj.weight"].rows == 12
    assert torch.allclose(stats["mha.out_proj.weight"].gram, heads.T @ heads, atol=1e-9)


class _SelfAttention(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def test_sparsegpt_on_a_transformer_layer_beats_magnitude_at_its_outputs():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = (torch.randn(16, 6, 3) @ torch.randn(3, 16)) + 0.1 * torch.randn(16, 6, 16)  # correlated features
    with torch.no_grad():
        ref = layer(x)
    err = {}
    for spec in ("magnitude", {"name": "sparsegpt", "samples": 16}):
        model = copy.deepcopy(layer)
        p = Pruner(model, spec, sparsity=0.5, schedule="manual")
        p.calibrate([x])
        p.prune(0.5)
        assert p.masks["self_attn.in_proj_weight"].float().mean() == pytest.approx(0.5, abs=0.01)
        with torch.no_grad():
            err[p.method.name] = (model(x) - ref).square().mean().item()
    assert err["sparsegpt"] < 0.5 * err["magnitude"]


def _correlated(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, generator=g, dtype=torch.double)
    return base @ torch.randn(3, d, generator=g, dtype=torch.double) + 0.1 * torch.randn(n, d, generator=g,
                                                                                         dtype=torch.double)


def test_sparsegpt_with_a_fixed_mask_is_the_least_squares_fit_of_the_kept_weights():
    from prunelab.engine.reconstruction import sparsegpt

    x = _correlated()
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[:, :3] = False  # the pruned columns come first: every kept weight may compensate them
    new, kept, _ = sparsegpt(w, x.T @ x, keep=keep, percdamp=0.0)
    assert torch.equal(kept, keep) and (new[:, :3] == 0).all()
    for r in range(3):
        fit = torch.linalg.lstsq(x[:, 3:], x @ w[r]).solution
        assert torch.allclose(new[r, 3:], fit, atol=1e-5)


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda():
    from prunelab.engine.reconstruction import sparsegpt

    x = _correlated(n=256, d=32)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2), dtype=torch.double)
    err = {}
    new, keep, _ = sparsegpt(w, x.T @ x, 0.5, blocksize=8)
    assert int(keep.sum()) == w.numel() // 2
    err["sparsegpt"] = (x @ (new * keep).T - x @ w.T).norm()
    for name, score in (("magnitude", w.abs()), ("wanda", w.abs() * x.norm(dim=0))):
        m = torch.zeros_like(w, dtype=torch.bool).scatter_(1, score.topk(16, dim=1).indices, True)
        err[name] = (x @ (w * m).T - x @ w.T).norm()
    assert err["sparsegpt"] < 0.5 * min(err["wanda"], err["magnitude"])


def test_sparsegpt_two_four_is_exact():
    from prunelab.engine.reconstruction import sparsegpt

    x = _correlated(d=16)
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.double)
    new, keep, _ = sparsegpt(w, x.T @ x, n=2, m=4, blocksize=8)
    assert (keep.reshape(4, 4, 4).sum(-1) == 2).all() and (new[~keep] == 0).all()


def test_sequential_sparsegpt_calibrates_each_layer_on_the_pruned_layers_before_it():
    from prunelab.engine.reconstruction import sparsegpt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = torch.randn(32, 6, dtype=torch.double)
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    p = Pruner(model, {"name": "sparsegpt", "samples": 32}, sparsity=0.5, schedule="manual")
    p.calibrate([x])
    p.prune(0.5)
    # by hand: layer 1 from the dense inputs, layer 2 from the outputs of the pruned, updated layer 1
    new1, keep1, _ = sparsegpt(w1, x.T @ x, 0.5)
    h = torch.relu(x @ (new1 * keep1).T + model[0].bias.detach())
    new2, keep2, _ = sparsegpt(w2, h.T @ h, 0.5)
    assert torch.equal(p.masks["0.weight"], keep1) and torch.equal(p.masks["2.weight"], keep2)
    assert torch.allclose(model[2].weight, new2 * keep2) and torch.allclose(model[0].weight, new1 * keep1)
    dense_h = torch.relu(x @ w1.T + model[0].bias.detach())  # what a calibration on the dense model would see
    assert not torch.allclose(sparsegpt(w2, dense_h.T @ dense_h, 0.5)[0] * keep2, new2 * keep2)


@pytest.mark.parametrize("method", ["wanda", "{name: sparsegpt, samples: 64}"])
def test_calibrated_methods_run_as_recipes_and_retrain(tmp_path, method):
    from prunelab.experiment import Runner, load_recipe

    recipe = load_recipe("quickstart", ["train.epochs=1", f"prune.method={method}", "prune.sparsity=0.75",
                                        "prune.schedule.name=oneshot", "prune.retrain.epochs=1"])
    s = Runner(recipe, tmp_path / "r", progress=False, log=lambda m: None).run()
    assert [row["stage"] for row in s["stages"]] == ["dense", "round_01"]
    assert s["sparsity_prunable"] == pytest.approx(0.75, abs=1e-3) and s["pruned_acc"] > 0.5


def test_calibration_samples_cap_what_is_used():
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    x[1:] *= torch.linspace(0.1, 5, 8)  # the later inputs would change the norms, and the decision

    def masks(batches, samples=None):
        torch.manual_seed(1)
        p = Pruner(nn.Sequential(nn.Linear(8, 4)), "wanda", sparsity=0.5, schedule="manual")
        p.calibrate(batches, samples=samples)
        return p.prune(0.5)["0.weight"]

    assert torch.equal(masks([x], samples=1), masks([x[:1]]))
    assert not torch.equal(masks([x], samples=1), masks([x]))
    with pytest.raises(ConfigError, match="calibration samples must be a positive integer"):
        Pruner(nn.Sequential(nn.Linear(8, 4)), "wanda", sparsity=0.5, schedule="manual").calibrate([x], samples=0)


def test_recipe_calibration_section(tmp_path, capsys):
    from prunelab.cli import main
    from prunelab.experiment import Runner, load_recipe

    recipe = load_recipe("quickstart", ["train.epochs=1", "prune.method=sparsegpt", "prune.schedule.name=oneshot",
                                        "prune.sparsity=0.5", "prune.retrain.epochs=0",
                                        "prune.calibration={samples: 16, batch_size: 4}"])
    s = Runner(recipe, tmp_path / "r", progress=False, log=lambda m: None).run()
    assert s["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert main(["run", "prune.calibration.samples=0", "--runs-dir", str(tmp_path)]) == 2
    assert "prune.calibration.samples" in capsys.readouterr().err


def test_sparsegpt_per_row_budget():
    from prunelab.engine.reconstruction import sparsegpt

    x = _correlated(d=16)
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(4), dtype=torch.double)
    w[0] *= 10  # one loud row: a shared threshold would spare it, a per-row budget does not
    _, shared, _ = sparsegpt(w, x.T @ x, 0.5, blocksize=8)
    _, rows, _ = sparsegpt(w, x.T @ x, 0.5, blocksize=8, per_row=True)
    assert (rows.reshape(6, 2, 8).sum(-1) == 4).all()
    assert int(shared.sum()) == int(rows.sum()) == 48 and not torch.equal(shared, rows)


def test_sparsegpt_splits_its_budget_by_the_allocation():
    """allocation global: each layer is reconstructed at the sparsity global magnitude gives it, exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight.mul_(4)  # a layer of large weights: global magnitude leaves it denser
    ref = Pruner(copy.deepcopy(model), {"name": "magnitude", "allocation": "global"}, sparsity=0.8,
                 schedule="manual").prune(0.8)
    p = Pruner(model, {"name": "sparsegpt", "allocation": "global", "samples": 64, "blocksize": 8},
               sparsity=0.8, schedule="manual")
    p.calibrate([torch.randn(64, 8)])
    p.prune(0.8)
    for name, m in p.masks.items():
        assert int(m.sum()) == int(ref[name].sum()), name
    assert p.history[-1]["layer_sparsity"]["0.weight"] < 0.8 < p.history[-1]["layer_sparsity"]["2.weight"]
    with pytest.raises(ConfigError, match="use allocation uniform"):
        Pruner(model, {"name": "sparsegpt", "allocation": "global", "granularity": "nm"}, schedule="manual")


class _Chain(nn.Module):
    """Blocks applied in turn (chained) or side by side and summed (not a chain)."""

    def __init__(self, chained=True):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.chained = chained

    def forward(self, x):
        h = self.inp(x)
        if self.chained:
            for b in self.blocks:
                h = b(h)
            return h
        return sum(b(h) for b in self.blocks)


@pytest.mark.parametrize("chained", [True, False])
def test_sequential_statistics_see_the_blocks_already_updated(chained):
    """Block by block on cached inputs (chained) or a full pass per target (not): either way, a group's
    statistics equal those measured on the whole model with every earlier group already rewritten, and a chain
    costs one checking pass and one catching pass of the whole model, not one per target."""
    from prunelab.calibration import Calibration, Options, groups as calibration_groups, materialise
    from prunelab.calibration.blocks import find_blocks

    torch.manual_seed(0)
    model = _Chain(chained)
    targets = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    batches = [torch.randn(5, 4) for _ in range(3)]
    assert len(find_blocks(model, targets)[0]) == 3
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    groups = (g.stats for g in calibration_groups(model, targets, Calibration(12, ("gram",), sequential=True),
                                                  materialise(iter(batches), 12), Options()))
    done, full_passes = [], 0
    while True:
        before = len(calls)
        stats = next(groups, None)
        full_passes += len(calls) - before
        if stats is None:
            break
        handle.remove()
        for name, st in stats.items():  # measured after every earlier group's update, before this one's
            ref = input_stats(model, {name: targets[name]}, batches, 12, gram=True)[name]
            assert torch.equal(st.gram, ref.gram), name  # the same inputs, the same float32 sums: bit for bit
        with torch.no_grad():
            for name in stats:
                model.get_parameter(name).mul_(0.5).add_(0.1)  # the caller's update of this group
        done += list(stats)
        handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    assert done == list(targets)
    # chained: inp (3 batches) + the chain check (1) + the catching pass (3); otherwise 3 per target
    assert full_passes == (3 + 1 + 3 if chained else 1 + 3 * len(targets))


def test_curve_reads_a_one_shot_baseline_without_rounds(tmp_path):
    from prunelab.experiment.curve import curve_points

    points = curve_points("quickstart", [10.0], {"sparsegpt": "{name: sparsegpt, samples: 64}", "random": "random"},
                          1, tmp_path)
    over = {p["method"]: p["overrides"] for p in points}
    assert "prune.schedule.name=oneshot" in over["sparsegpt"]
    assert not any("schedule" in o for o in over["magnitude"] + over["random"])  # iterative, as the recipe


def test_a_method_that_writes_the_model_while_deciding_is_refused():
    from prunelab.methods.base import Method

    class Writes(Method):
        def decide(self, view, ctx):
            with torch.no_grad():
                view.params["weight"].zero_()  # the Pruner is the only writer
            return {"weight": torch.ones(2, 3, dtype=torch.bool)}

    p = Pruner(nn.Linear(3, 2), Writes(), schedule="manual", sparsity=0.5)
    with pytest.raises(ConfigError, match="wrote the model's weights while deciding"):
        p.prune(0.5)


def test_sparsegpt_breaks_ties_on_a_transposed_weight():
    """A Conv1D's weight reaches the solve as a transposed view; tied scores (equal weights) must still be cut to
    the exact count (this crashed with a view on a column-major mask)."""
    from prunelab.engine.reconstruction import sparsegpt

    stored = torch.ones(8, 6)  # (in, out) as HF Conv1D stores it: every score in a block tied
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    new, keep, ok = sparsegpt(stored.T, x.T @ x, 0.55, blocksize=4)  # 13 of each block's 24: a column's tie cut
    assert ok and int((~keep).sum()) == 26 and new.shape == (6, 8)


def test_sparsegpt_on_a_depthwise_1x1_convolution_prunes_the_asked_share_by_the_closed_form():
    """Eight one-weight groups: H_g = sum of x_g^2 (dampened by 1 % of itself), so SparseGPT's score w^2 / [H^-1]^2
    is w_g^2 * H_g and the layer's round(0.5 * 8) = 4 lowest go (rounded per group, each pruned its one weight)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 1, groups=8)
    x = torch.randn(6, 8, 5, 5) * torch.linspace(0.2, 2.0, 8)[None, :, None, None]
    p = Pruner(nn.Sequential(conv), "sparsegpt", sparsity=0.5, schedule="manual")
    w = conv.weight.detach().flatten().clone()
    p.calibrate([x])
    p.prune(0.5)
    h = x.double().square().sum((0, 2, 3)) * 1.01
    want = torch.zeros(8, dtype=torch.bool)
    want[(w.double().square() * h).argsort()[:4]] = True
    assert torch.equal(~p.masks["0.weight"].flatten(), want)
