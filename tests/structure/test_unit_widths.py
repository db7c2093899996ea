"""How many units of each kind a transformer keeps, and which: widths rounded to a multiple (``round_to``, the
hidden size to the heads), a budget per kind (``kind_sparsity``), units scored by the layer that reads them
(``score_from: readers``, FLAP's ranking)."""
import pytest
import torch

from prunelab import ConfigError, Pruner
from prunelab.export import shrink
from prunelab.models.hf import save_pretrained

transformers = pytest.importorskip("transformers")

from tiny_transformers import V, block_inputs, ids as _x, pruned as _pruned, tiny as _model  # noqa: E402

@pytest.mark.parametrize("units, sparsity, round_to, want", [
    (["hidden"], 0.3, 1, {"hidden_size": 20}),  # 32 x 0.7 = 22.4 -> 22, not a multiple of the 4 heads -> 20
    (["mlp"], 0.3, 8, {"intermediate_size": 32}),  # 48 x 0.7 = 33.6 -> 33 -> 32
    (["mlp", "hidden"], 0.5, 8, {"intermediate_size": 24, "hidden_size": 16}),
    (["mlp"], 0.9, 16, {"intermediate_size": 16})])  # never below one multiple
def test_widths_rounded_so_the_folder_saves_and_runtimes_get_their_multiples(tmp_path, units, sparsity, round_to,
                                                                              want):
    model = _model("llama")
    pruner = _pruned(model, units, sparsity=sparsity, round_to=round_to)
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert {k: changed[k] for k in want} == want
    save_pretrained(small, tmp_path / "m")  # a hidden size the heads do not divide could not be saved
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    with torch.no_grad():
        assert torch.allclose(back.eval()(_x(2, 5)).logits, small(_x(2, 5)).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="round_to is a whole number"):
        _pruned(_model("llama"), ["mlp"], round_to=0)


def test_a_budget_per_unit_kind():
    """kind_sparsity: half the MLP channels, none of the key-value groups, where one sparsity would take a group of
    two from every block; an iterative schedule reaches each kind's share at its last event."""
    model = _model("llama")
    pruner = _pruned(model, ["mlp", "heads"], kind_sparsity={"mlp": 0.5, "heads": 0.0})
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed == {"intermediate_size": 24}
    model = _model("llama")
    method = {"name": "transformer_units", "units": ["mlp", "heads"], "criterion": "magnitude",
              "kind_sparsity": {"mlp": 0.75}}
    pruner = Pruner(model, method, schedule={"name": "iterative", "rounds": 2, "sparsity": 0.5}, auto_prune=False,
                    example_inputs=_x(1))
    widths = []
    for event in range(2):
        pruner.prune_event(event)
        report = pruner.accounting()["channels"]["units"]
        widths.append((report["mlp"]["kept"][0], report["heads"]["kept"][0]))
    assert widths[-1] == (12, 1)  # mlp: 48 x 0.25 at the end; heads: the schedule's 0.5 of 2 groups
    assert widths[0][0] < 48 and widths[0][0] > 12  # the first event takes part of the way
    for bad in ({"depth": 0.5}, {"mlp": 1.0}, "mlp"):
        with pytest.raises(ConfigError, match="kind_sparsity"):
            _pruned(_model("llama"), ["mlp", "heads"], kind_sparsity=bad)


def test_flap_fluctuation_scored_by_the_readers_by_hand():
    """criterion fluctuation, score_from readers: each block keeps the MLP channels with the largest
    Var(a_j) * ||W_down[:, j]||^2, a_j the down projection's input over every calibration token (FLAP's WIFV)."""
    model = _model("llama")
    batches = [_x(4, s) for s in range(3)]
    seen = block_inputs(model, "mlp.down_proj", batches)
    want = []
    for i, layer in enumerate(model.model.layers):
        a = seen[i]
        score = a.var(0, unbiased=False) * layer.mlp.down_proj.weight.double().square().sum(0)
        want.append(set(score.topk(24).indices.tolist()))
    method = {"name": "transformer_units", "units": ["mlp"], "criterion": "fluctuation", "score_from": "readers"}
    pruner = Pruner(model, method, schedule="manual", sparsity=0.5, example_inputs=_x(1))
    pruner.calibrate(batches)
    pruner.prune(0.5, final=True)
    got = [set((pruner.masks[f"model.layers.{i}.mlp.down_proj.weight"].any(0)).nonzero().flatten().tolist())
           for i in range(3)]
    assert got == want
    with pytest.raises(ConfigError, match="score_from is all or readers"):
        _pruned(_model("llama"), ["mlp"], score_from="writers")


def test_heads_kept_divide_the_hidden_size(tmp_path):
    """4 groups of one head over a hidden size of 32: a quarter of them would leave 3 heads, which LLaMA's config
    refuses (32 / 3); 2 are kept, and the folder saves and loads. With the hidden size pruned too, the kept
    groups divide the original count (so any kept hidden size, a multiple of the 4 heads, is one of theirs)."""
    from prunelab.structure.recognize import family_of
    from prunelab.structure.transformer import allowed_counts

    def llama(hidden):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=V, hidden_size=hidden, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4,
            num_hidden_layers=2)).eval()

    model = llama(32)
    assert allowed_counts(model, family_of(model), ["heads"]) == {"heads": (1, 2, 4)}
    wide = llama(48)  # 48 / 3 is whole: every count fits, unless the hidden size may shrink too
    assert allowed_counts(wide, family_of(wide), ["heads"]) == {}
    assert allowed_counts(wide, family_of(wide), ["heads", "hidden"]) == {"heads": (1, 2, 4)}
    pruner = _pruned(model, ["heads"], sparsity=0.25)
    small, changed = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    assert changed["num_attention_heads"] == 2
    save_pretrained(small, tmp_path / "m")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    with torch.no_grad():
        assert torch.allclose(back.eval()(_x(2, 5)).logits, small(_x(2, 5)).logits, atol=1e-5)
