"""Calibrated one-shot methods on models as users load them: Hugging Face families with transformers' default
key-value cache on, float32 and bfloat16 weights (every LLM checkpoint), layers wider than SparseGPT's block,
tied scores, grouped convolutions solved in one batch, fused MoE experts, a detector's list of images."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.engine.reconstruction import sparsegpt

transformers = pytest.importorskip("transformers")

KINDS = ("llama", "mistral", "qwen2", "gemma2", "phi3", "mixtral", "gpt2", "gpt_neox")


def _model(kind: str, cache: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=48, n_embd=32, n_head=4, n_layer=2, n_positions=32)
    elif kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(vocab_size=48, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                            num_hidden_layers=2, max_position_embeddings=32)
    else:
        kw = {"num_local_experts": 4, "num_experts_per_tok": 2} if kind == "mixtral" else {}
        if kind in ("phi3", "gemma2"):
            kw.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, head_dim=8)
        config = transformers.AutoConfig.for_model(kind, vocab_size=48, hidden_size=32, intermediate_size=48,
                                                   num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                                   **kw)
    config.use_cache = cache
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _prune(model, method: str):
    x = torch.randint(0, 48, (4, 12), generator=torch.Generator().manual_seed(1))
    p = Pruner(model, {"name": method, "samples": 4, **({"blocksize": 16} if method == "sparsegpt" else {})},
               sparsity=0.5, schedule="manual")
    p.calibrate([(x, x)], samples=4, targets=True)
    p.prune(0.5)
    return p, x


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_on_changes_nothing_and_bfloat16_reaches_the_budget(kind):
    """With the cache on (transformers' default) SparseGPT decides what it decides with it off; in bfloat16 it
    and Wanda reach 50 % of every target, the weights stay bfloat16, the model still runs."""
    off, _ = _prune(_model(kind, False), "sparsegpt")
    on_model = _model(kind, True)
    on, x = _prune(on_model, "sparsegpt")
    assert all(torch.equal(on.masks[n], off.masks[n]) for n in off.masks)
    assert all(torch.equal(on.params[n], off.params[n]) for n in off.masks)
    assert on_model.config.use_cache is True  # the user's setting is given back
    for method in ("sparsegpt", "wanda"):
        model = _model(kind, True).to(torch.bfloat16)
        p, x = _prune(model, method)
        for name, mask in p.masks.items():
            assert abs(1 - mask.float().mean().item() - 0.5) <= 1 / mask.numel() + 1e-9, (method, name)
            assert p.params[name].dtype == torch.bfloat16 and bool((p.params[name][~mask] == 0).all())
        with torch.no_grad():
            assert torch.isfinite(model(x).logits.float()).all()


def test_tied_scores_dead_columns_and_an_all_zero_block_are_exact():
    """Ties at the threshold (equal weights, bfloat16's coarse values), columns no input reached and a block of
    zero weights: every block prunes its exact share, ties broken by position, never a dead column kept."""
    h = torch.eye(300)
    _, keep, _ = sparsegpt(torch.ones(4, 300, dtype=torch.bfloat16), h, 0.5, blocksize=64)
    assert int(keep.sum()) == 600 and keep.dtype == torch.bool
    # within each block the surplus of ties is kept at the highest (row-major) positions: the last two rows
    assert not bool(keep[:2, :64].any()) and bool(keep[2:, :64].all())
    w = torch.randn(4, 300)
    w[:, 64:128] = 0  # an all-zero block
    dead = torch.eye(300)
    dead[5:50, 5:50] = 0  # columns 5..49 never reached by an input
    nw, keep, ok = sparsegpt(w, dead, 0.5, blocksize=64)
    assert ok and int(keep.sum()) == 600 and not bool(keep[:, 5:50].any()) and bool((nw[~keep] == 0).all())
    low = torch.randn(6, 200).to(torch.bfloat16)
    nw, keep, _ = sparsegpt(low, torch.eye(200), 0.5, blocksize=32)
    assert nw.dtype == torch.bfloat16 and int(keep.sum()) == 600


def test_fused_expert_tensors_are_targets_of_element_methods():
    """Mixtral's experts (3-D gate_up_proj / down_proj) are pruned by magnitude, one expert's output row per
    row; calibrated and channel methods leave them dense and say why."""
    model = _model("mixtral", False)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.8, schedule="manual")
    p.prune(0.8)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    experts = dict(model.named_parameters())[name]
    assert name in p.masks and p.masks[name].shape == experts.shape and p.layouts[name].experts == 4
    assert bool((experts[~p.masks[name]] == 0).all())
    assert p.summary()["all_weights"]["sparsity"] > 0.7  # was 0.13 with the experts out of reach
    rows = Pruner(_model("mixtral", False), {"name": "magnitude", "granularity": "filter"}, sparsity=0.5,
                  schedule="manual")
    rows.prune(0.5)  # a row is one expert's output row: whole rows of each expert's matrix go
    kept = rows.masks[name].reshape(-1, experts.shape[-1])
    assert bool((kept.all(1) | ~kept.any(1)).all())
    w = Pruner(_model("mixtral", False), "wanda", sparsity=0.5, schedule="manual")
    assert name in w.params  # calibrated per expert (tests/structure/test_experts.py)
    d = Pruner(_model("mixtral", False), {"name": "wanda", "selector": "dsnot"}, sparsity=0.5,
               schedule="manual")  # DSnoT's means and variances per expert: not built
    assert name not in d.params and "fused expert weights, which wanda leaves dense" in d.skipped[name]


@pytest.mark.parametrize("mode", [{}, {"per_row": True}, {"n": 2, "m": 4}])
def test_groups_solved_in_one_batch_equal_each_group_solved_alone(mode):
    """A grouped convolution's groups go through SparseGPT's column loop together: the same masks (ties and
    dead columns included) and weights as one call per group."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, 40, generator=g).round(decimals=1)  # rounded: ties at the block thresholds
    x = torch.randn(5, 64, 40, generator=g)
    x[1, :, 7] = 0  # a dead column in one group only
    x[3, :, :20] = 0  # half the columns of another
    h = x.transpose(1, 2) @ x
    bw, bk, ok = sparsegpt(w, h, 0.5, blocksize=16, **mode)
    assert ok and bw.shape == w.shape and bk.shape == w.shape
    for i in range(5):
        # unstructured, the layer's count is chosen across its groups (see the next test): each group's update
        # is still its own, given its mask; per row and N:M, each group is the same problem alone
        ow, ok_i, _ = sparsegpt(w[i], h[i], 0.5, blocksize=16, keep=bk[i] if not mode else None, **mode)
        assert torch.equal(bk[i], ok_i)
        torch.testing.assert_close(bw[i], ow, rtol=1e-5, atol=1e-6)
    # dead columns go first and count towards the budget (half of group 3 is dead: nothing else of it goes)
    assert int((~bk).sum()) == 5 * 60 and (not bk[3, :, :20].any() if not mode else True)
    over = torch.randn(2, 32, generator=g)
    h = torch.eye(32)
    h[:24, :24] = 0  # three quarters of the columns unreached: more than the budget of 0.5 takes
    nw, keep, _ = sparsegpt(over, h, 0.5, blocksize=8, **mode)
    assert int((~keep).sum()) == 32 and torch.equal(nw[keep], over[keep])


def test_a_grouped_layers_count_is_chosen_across_its_groups_by_the_closed_form():
    """One block: SparseGPT prunes the lowest w^2 / [U]_jj^2, U the upper Cholesky factor of the dampened H^-1,
    and a grouped layer's round(0.5 * all) lowest are taken over all its groups together (one-weight depthwise
    groups, rounded one by one, each lost its weight)."""
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(4, 3, 12, generator=g), torch.randn(4, 30, 12, generator=g) * torch.tensor([.2, 1, 3, 9])[:, None, None]
    h = x.transpose(1, 2) @ x
    _, keep, ok = sparsegpt(w, h, 0.5, blocksize=12)
    scores = []
    for i in range(4):
        hd = h[i].double() + 0.01 * h[i].double().diagonal().mean() * torch.eye(12, dtype=torch.float64)
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
        scores.append(w[i].double().square() / u.diagonal().square())
    want = torch.zeros(4 * 3 * 12, dtype=torch.bool)
    want[torch.stack(scores).flatten().argsort()[:72]] = True
    assert ok and torch.equal(~keep.flatten(), want)
    assert sorted(int((~keep[i]).sum()) for i in range(4)) != [18] * 4  # not the same count in every group


def test_a_group_whose_gram_matrix_is_not_positive_definite_falls_back_alone():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(3, 4, 24, generator=g), torch.randn(3, 48, 24, generator=g)
    h = x.transpose(1, 2) @ x
    h[1] = -torch.eye(24)  # not positive definite even after dampening
    h[2, 0, 0] = float("nan")
    bw, bk, ok = sparsegpt(w, h, 0.5, blocksize=8)
    assert not ok and int((~bk).sum()) == 144
    alone, keep0, ok0 = sparsegpt(w[0], h[0], 0.5, blocksize=8, keep=bk[0])
    assert ok0 and torch.equal(bk[0], keep0) and torch.allclose(bw[0], alone, atol=1e-6)
    for i in (1, 2):  # magnitude pruning without an update: the kept weights are the weights
        assert torch.equal(bw[i][bk[i]], w[i][bk[i]])


def test_a_detectors_list_of_images_is_one_batch_of_as_many_samples():
    """torchvision detectors take a list of images of any sizes: the list is the batch, cut to the samples."""
    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, images):
            return self.head(torch.stack([self.conv(im[None]).mean((0, 2, 3)) for im in images]))

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 12, 16, generator=g), torch.rand(3, 10, 10, generator=g), torch.rand(3, 8, 8, generator=g)]
    model, seen = Detector(), []
    model.conv.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    p = Pruner(model, {"name": "wanda", "samples": 2}, sparsity=0.5, schedule="manual")
    p.calibrate([(images,)], targets=False)
    p.prune(0.5)
    assert seen[:2] == [(1, 3, 12, 16), (1, 3, 10, 10)] and (1, 3, 8, 8) not in seen
    assert p.summary()["sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("kind", ["gpt_oss", "llama4_text", "mixtral"])
def test_fused_expert_tensors_are_read_along_each_layouts_own_input_axis(kind):
    """GPT-OSS and Llama-4 store experts (experts, in, out), Mixtral (experts, out, in): 2:4 groups run along the
    input axis of each, checked in the stored tensors (before, GPT-OSS and Llama-4 were grouped along outputs)."""
    extra = {"gpt_oss": {"head_dim": 8, "sliding_window": 8}, "llama4_text": {"head_dim": 8,
                                                                             "intermediate_size_mlp": 64}}
    config = transformers.AutoConfig.for_model(kind, vocab_size=48, hidden_size=32, intermediate_size=48,
                                               num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                                               num_local_experts=4, num_experts_per_tok=2, **extra.get(kind, {}))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    p = Pruner(model, {"name": "magnitude", "granularity": {"name": "nm", "n": 2, "m": 4}}, sparsity=0.5,
               schedule="manual")
    p.prune(0.5)
    names = [n for n in p.params if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(names) == 2
    for name in names:
        mask = p.masks[name]
        inputs_axis = 1 if kind != "mixtral" else 2
        groups = mask.movedim(inputs_axis, -1).reshape(-1, 4).sum(-1)
        assert bool((groups == 2).all()), name
