"""FLAP's bias compensation (``transformer_units`` ``compensate: bias``): a removed MLP channel's or head's mean
contribution moves into its reader's bias, the bias the config states, and the smaller model loads as the same
class."""
import pytest
import torch

from prunelab import ConfigError, Pruner
from prunelab.experiment.checkpoint import load_checkpoint, save_checkpoint
from prunelab.export import shrink
from prunelab.models.hf import save_pretrained

transformers = pytest.importorskip("transformers")

from tiny_transformers import block_inputs, ids as _x, pruned, tiny as _model  # noqa: E402

BATCHES = [_x(4, s) for s in range(3)]


FLAP = {"criterion": "fluctuation", "score_from": "readers", "compensate": "bias"}


def _prune(model, units, **kw):
    return pruned(model, units, **{**FLAP, **kw})


@pytest.mark.parametrize("units, reader", [(["mlp"], "mlp.down_proj"), (["heads"], "self_attn.o_proj")])
def test_the_readers_bias_absorbs_the_removed_units_mean_by_hand(tmp_path, units, reader):
    """b = W[:, removed] E[x_removed] over every calibration token, computed from the dense model; the model
    gains the biases its config flag states (zero elsewhere), saves, and loads as plain LLaMA."""
    model = _model()
    dense = {i: layer.get_submodule(reader).weight.detach().double().clone()
             for i, layer in enumerate(model.model.layers)}
    seen = block_inputs(model, reader, BATCHES)
    pruner = _prune(model, units)
    flag = "mlp_bias" if units == ["mlp"] else "attention_bias"
    assert getattr(model.config, flag) is True
    for i, layer in enumerate(model.model.layers):
        gone = ~pruner.masks[f"model.layers.{i}.{reader}.weight"].any(0)
        assert 0 < int(gone.sum()) < gone.numel()
        want = dense[i][:, gone] @ seen[i].mean(0)[gone]
        assert torch.allclose(layer.get_submodule(reader).bias.double(), want, atol=1e-6)
        siblings = ["gate_proj", "up_proj"] if units == ["mlp"] else ["q_proj", "k_proj", "v_proj"]
        parent = reader.split(".")[0]
        for s in siblings:  # the flag's other biases: there, zero
            assert torch.count_nonzero(layer.get_submodule(f"{parent}.{s}").bias) == 0
    small, _ = shrink(model, pruner.masks, _x(1), graph=pruner.channels)
    save_pretrained(small, tmp_path / "m")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True).eval()
    with torch.no_grad():
        assert torch.allclose(back(_x(2, 5)).logits, model(_x(2, 5)).logits, atol=1e-5)


def test_compensation_keeps_each_readers_mean_output():
    """With MLP channels gone from block 0 only, its down projection's mean output over the calibration tokens is
    the dense one (the kept channels' inputs are unchanged; the removed ones' mean is in the bias); without
    compensation it is not."""
    def mean_out(m):
        outs = []
        h = m.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, a, o: outs.append(o.reshape(-1, 32)))
        with torch.no_grad():
            for x in BATCHES:
                m(x)
        h.remove()
        return torch.cat(outs).double().mean(0)

    want = mean_out(_model())
    targets = {"include": ["model.layers.0.mlp.*"]}
    for compensate, close in (("bias", True), ("none", False)):
        model = _model()
        method = {"name": "transformer_units", "units": ["mlp"], "criterion": "fluctuation",
                  "score_from": "readers", "compensate": compensate}
        pruner = Pruner(model, method, schedule="manual", sparsity=0.5, example_inputs=_x(1), targets=targets)
        pruner.calibrate(BATCHES)
        pruner.prune(0.5, final=True)
        assert torch.allclose(mean_out(model), want, atol=1e-5) is close


def test_a_config_that_cannot_state_the_bias_is_refused_and_a_rebuilt_model_adopts_it(tmp_path):
    model = _model("mistral")  # no mlp_bias field: the smaller model could not carry one
    before = {n for n, _ in model.named_parameters()}
    with pytest.raises(ConfigError, match="cannot state one"):
        _prune(model, ["mlp"])
    assert {n for n, _ in model.named_parameters()} == before  # refused before anything changed
    with pytest.raises(ConfigError, match="compensate is none or bias"):
        _prune(_model(), ["mlp"], compensate="yes")
    # a checkpoint of a compensated model loads into the model its recipe builds again
    model = _model()
    pruner = _prune(model, ["mlp", "heads"])
    save_checkpoint(tmp_path / "c", model, pruner.masks)
    fresh = _model()
    load_checkpoint(tmp_path / "c", fresh)
    assert fresh.config.mlp_bias and fresh.config.attention_bias
    with torch.no_grad():
        assert torch.equal(fresh(_x(2, 5)).logits, model(_x(2, 5)).logits)


def test_a_decision_s_shifts_are_checked_and_written_by_the_pruner():
    """A method's own Decision may carry shifts: the Pruner adds them to the named parameters after the masks;
    one naming no parameter, or not finite, is one sentence and nothing of it is written."""
    from dataclasses import dataclass

    from prunelab.methods import METHODS, Decision, Method

    @dataclass
    class Shifting(Method):
        bad: str = ""

        def decide(self, view, ctx):
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in view.params.items()}
            shift = torch.full((4,), float("nan") if self.bad == "nan" else 0.5)
            return Decision(masks, shifts={("nope" if self.bad == "name" else "1.bias"): shift})

    METHODS.register("test_shifting")(Shifting)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 4))
        before = model[1].bias.detach().clone()
        Pruner(model, "test_shifting", sparsity=0.5, schedule="manual").prune(0.5)
        assert torch.equal(model[1].bias.detach(), before + 0.5)
        for bad, match in (("name", "not a parameter of that shape"), ("nan", "NaN or infinite shifts")):
            model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 4))
            before = model[1].bias.detach().clone()
            with pytest.raises(ConfigError, match=match):
                Pruner(model, {"name": "test_shifting", "bad": bad}, sparsity=0.5, schedule="manual").prune(0.5)
            assert torch.equal(model[1].bias.detach(), before)
    finally:
        METHODS._items.pop("test_shifting")
