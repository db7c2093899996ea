"""N:M channel permutations (RIA's reallocation and assignment): the dealt-out order by hand, the assignment
never below its start, and in a model: the stored masks N:M, the permuted model the same function."""
import pytest
import torch

from prunelab import Pruner
from prunelab.errors import ConfigError
from prunelab.engine.permutation import assignment, kept_score, reallocation, search


def test_reallocation_by_hand_on_one_row():
    s = torch.tensor([[9.0, 8, 7, 6, 1, 1, 1, 1]])
    assert float(kept_score(s, 2, 4)) == 19  # 9 + 8 | 1 + 1
    # ascending order 4 5 6 7 3 2 1 0; position 0 takes the lowest quarter (4, 5), position 1 the next one
    # reversed (7, 6), position 2 the next (3, 2), position 3 the top one reversed (0, 1)
    index = reallocation(s, 4)
    assert index.tolist() == [4, 7, 3, 0, 5, 6, 2, 1]
    assert float(kept_score(s[:, index], 2, 4)) == 30  # 6 + 9 | 7 + 8: every large score kept
    assert torch.equal(search(s, 2, 4, "heuristic"), index)


def test_assignment_never_loses_and_search_never_goes_below_the_identity():
    gains = 0
    for seed in range(6):
        s = torch.rand(3, 16, generator=torch.Generator().manual_seed(seed)).double() ** 3
        start = reallocation(s, 4)
        better = assignment(s, start, 2, 4)
        assert sorted(better.tolist()) == list(range(16))  # a permutation
        assert kept_score(s[:, better], 2, 4) >= kept_score(s[:, start], 2, 4) - 1e-12
        gains += bool(kept_score(s[:, better], 2, 4) > kept_score(s[:, start], 2, 4) + 1e-9)
        for mode in ("heuristic", "lsa"):
            assert kept_score(s[:, search(s, 2, 4, mode)], 2, 4) >= kept_score(s, 2, 4) - 1e-12
    assert gains >= 1
    # two rows where the dealt-out order keeps 20 and the identity 21: it is not taken
    s = torch.tensor([[2.0, 3, 0, 1, 1, 1, 3, 0], [3, 2, 0, 3, 3, 2, 3, 2]])
    assert float(kept_score(s[:, reallocation(s, 4)], 2, 4)) == 20 and float(kept_score(s, 2, 4)) == 21
    assert torch.equal(search(s, 2, 4, "heuristic"), torch.arange(8))


def _llama(dtype=torch.float64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, use_cache=False)
    return transformers.LlamaForCausalLM(config).to(dtype)


def _tokens(n=4, seed=0):
    return torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(seed))


def _prune(model, gran, criterion="wanda"):
    p = Pruner(model, {"name": "wanda", "criterion": {"name": criterion, "samples": 8}, "granularity": gran},
               sparsity=1 - gran.get("n", 2) / 4, schedule="manual")
    p.calibrate([_tokens(4, s) for s in range(2)])
    p.prune(p.schedule.sparsity)
    return p


def test_a_permutation_alone_leaves_the_function_unchanged():
    model, ref = _llama(), _llama()
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    p = _prune(model, {"name": "nm", "n": 4, "m": 4, "permute": "heuristic"})  # 4:4 keeps all: order only
    moved = model.model.layers[0].mlp.gate_proj.weight.detach()
    assert not torch.equal(moved, gate)
    assert sorted(map(tuple, moved.tolist())) == sorted(map(tuple, gate.tolist()))  # the same rows, reordered
    assert set(p.history[-1]["permuted"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    x = _tokens(2, 9)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ref(x).logits, atol=1e-12, rtol=0)


@pytest.mark.parametrize("criterion", ["wanda", "ria"])
def test_permuted_two_four_keeps_more_and_its_stored_masks_are_two_four(criterion):
    plain = _prune(_llama(), {"name": "nm"}, criterion)
    model = _llama()
    p = _prune(model, {"name": "nm", "permute": "lsa"}, criterion)
    for name, m in p.masks.items():
        assert (m.reshape(m.shape[0], -1, 4).sum(2) == 2).all(), name
    gains = p.history[-1]["permuted"]
    assert all(g >= 0 for g in gains.values()) and max(gains.values()) > 0
    down = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(p.masks[down], plain.masks[down])
    with pytest.raises(ConfigError, match="sparsegpt updates the weights as it prunes and does not permute"):
        Pruner(_llama(), {"name": "sparsegpt", "granularity": {"name": "nm", "permute": "lsa"}}, sparsity=0.5)
    with pytest.raises(ConfigError, match="N:M permute is one of none, heuristic, lsa"):
        Pruner(_llama(), {"name": "wanda", "granularity": {"name": "nm", "permute": "yes"}}, sparsity=0.5)


def test_an_mlp_with_biases_keeps_its_order_and_the_record_says_why():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2,
                                                                 n_positions=16, use_cache=False))
    p = _prune(gpt2, {"name": "nm", "permute": "heuristic"})
    assert "permuted" not in p.history[-1]
    assert p.history[-1]["not_permuted"] == {"transformer.h.0.mlp": "transformer.h.0.mlp.c_fc.bias is not a target "
                                                                     "(it would have to move too)"}


def test_dsnot_refines_a_permuted_two_four_from_moved_statistics():
    """DSnoT after a permutation reads the down projection's statistics in the moved order: its per-row expected
    output error, computed here from the dense model's inputs moved by the recovered permutation, is no larger
    than the top-k mask's under the same permutation (mismatched statistics would give arbitrary swaps)."""
    ref = _llama()
    seen = []
    h = ref.model.layers[1].mlp.down_proj.register_forward_hook(lambda mod, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        for s in range(2):
            ref(_tokens(4, s))
    h.remove()
    mean = torch.cat(seen).reshape(-1, 24).mean(0)
    errors = {}
    for selector in ("topk", "dsnot"):
        model = _llama()
        p = Pruner(model, {"name": "wanda", "samples": 8, "selector": selector, "sequential": False,
                           "granularity": {"name": "nm", "permute": "heuristic"}}, sparsity=0.5, schedule="manual")
        p.calibrate([_tokens(4, s) for s in range(2)])
        p.prune(0.5)
        down = "model.layers.1.mlp.down_proj.weight"
        m = p.masks[down]
        assert (m.reshape(m.shape[0], -1, 4).sum(2) == 2).all()
        # the permutation, from the kept entries of the moved gate rows against the dense ones
        gate, gate_mask = model.model.layers[1].mlp.gate_proj.weight.detach(), p.masks["model.layers.1.mlp.gate_proj.weight"]
        dense_gate = ref.model.layers[1].mlp.gate_proj.weight.detach()
        order = torch.stack([((dense_gate - gate[k]) * gate_mask[k]).abs().sum(1).argmin() for k in range(24)])
        assert sorted(order.tolist()) == list(range(24))
        w = ref.model.layers[1].mlp.down_proj.weight.detach()[:, order]
        errors[selector] = (w * ~m * mean[order]).sum(1).abs()
    assert torch.equal(errors["dsnot"] <= errors["topk"] + 1e-12, torch.ones(16, dtype=torch.bool))
    assert errors["dsnot"].sum() < errors["topk"].sum()
