"""The decoder families transformers ships that prunelab does not list (:data:`prunelab.structure.FAMILIES`): each
is recognised from its modules, every unit kind it offers is cut, the smaller model saved and loaded by plain
transformers with the masked model's logits, and every kind it does not offer is one sentence."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunelab import ConfigError, Pruner  # noqa: E402
from prunelab.export import shrink  # noqa: E402
from prunelab.structure import KINDS, FAMILIES, family_of  # noqa: E402
from prunelab.structure.units import supported_kinds  # noqa: E402

V = 64
SMALL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
             vocab_size=V, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# LLaMA-shaped decoder families of transformers 5.2x with no entry in FAMILIES, and what each can lose exactly
# (measured: the rest are refused by reason, e.g. OLMo-2's q_norm over all heads, Cohere's LayerNorm)
ZOO = {
    "granite": "mlp heads hidden depth", "smollm3": "mlp heads hidden depth", "olmo2": "mlp", "olmo3": "mlp",
    "cohere": "mlp heads depth", "cohere2": "mlp heads depth", "olmo": "mlp heads", "exaone": "mlp heads hidden depth",
    "exaone4": "mlp heads", "ernie4_5": "mlp heads hidden depth", "seed_oss": "mlp heads hidden depth",
    "ministral": "mlp heads hidden depth", "ministral3": "mlp heads hidden depth", "internlm3": "mlp heads hidden depth",
    "hunyuan_v1_dense": "mlp heads depth", "hyperclovax": "mlp heads hidden depth", "cwm": "mlp heads hidden depth",
    "helium": "mlp depth", "stablelm": "mlp depth", "vaultgemma": "mlp heads depth", "granite_swa": "mlp depth",
    "bitnet": "depth", "diffllama": "mlp depth",
}


def _model(model_type: str):
    if model_type not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {model_type}")
    default = transformers.AutoConfig.for_model(model_type)
    config = transformers.AutoConfig.for_model(model_type, **{
        k: v for k, v in SMALL.items() if hasattr(default, k) or k in getattr(default, "attribute_map", {})})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.config.use_cache = False
    with torch.no_grad():  # norm gains and biases away from their initial values, so a missed one shows
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def _x(n=2, seed=0):
    return torch.randint(3, V, (n, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", sorted(ZOO))
def test_a_family_nobody_listed_is_cut_by_what_its_modules_allow_saved_and_reloaded(model_type, tmp_path):
    model = _model(model_type)
    assert model_type not in FAMILIES
    fam = family_of(model)
    assert fam is not None and fam.recognized, model_type
    kinds = supported_kinds(model, fam)
    assert " ".join(kinds) == ZOO[model_type]
    for kind in set(KINDS) - set(kinds):  # refused in one sentence, before anything is pruned
        with pytest.raises(ConfigError) as err:
            Pruner(model, {"name": "transformer_units", "units": [kind]}, schedule="manual", sparsity=0.5,
                   example_inputs=_x(1))
        assert kind in str(err.value) and "\n" not in str(err.value)
    pruner = Pruner(model, {"name": "transformer_units", "units": list(kinds), "criterion": "magnitude"},
                    schedule="manual", sparsity=0.5, example_inputs=_x(1))
    if pruner.needs.calibration is not None:
        pruner.calibrate([_x(2, s) for s in range(2)])
    pruner.prune(0.5, final=True)
    small = shrink(model, pruner.masks, example_inputs=_x(1))[0]  # float64 check against the masked model inside
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    small.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want, got = model(_x(2, 9)).logits, again(_x(2, 9)).logits
    assert type(again) is type(model) and torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_a_family_whose_later_blocks_are_experts_is_read_from_its_experts_only(tmp_path):
    model = _model("flint")  # block 2 of 3 is a mixture of experts: not LLaMA-shaped, read by its experts
    fam = family_of(model)
    assert fam is not None and fam.experts_only and supported_kinds(model, fam) == ("experts",)
    with pytest.raises(ConfigError, match="heads units"):
        Pruner(model, {"name": "transformer_units", "units": ["heads"]}, schedule="manual", sparsity=0.5,
               example_inputs=_x(1))
    pruner = Pruner(model, {"name": "transformer_units", "units": ["experts"], "expert_score": "criterion"},
                    schedule="manual", sparsity=0.5, example_inputs=_x(1))
    pruner.prune(0.5, final=True)
    assert list(pruner.structure.removed(pruner.masks)) == ["model.layers.2.mlp.experts"]
    small = shrink(model, pruner.masks, example_inputs=_x(1))[0]
    small.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(_x(2, 9)).logits, model(_x(2, 9)).logits, atol=1e-4)
