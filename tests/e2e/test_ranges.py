"""Parameters out of their range, and settings that would be silently ignored: each is one sentence, refused
before any work (the third audit's open ranges)."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.errors import ConfigError


@pytest.mark.parametrize("a", [1e308, 4.5, -1, True])
def test_ria_exponent_out_of_range(a):
    with pytest.raises(ConfigError, match="ria a must be a number from 0 to 4"):
        Pruner(nn.Sequential(nn.Linear(4, 4)), {"name": "wanda", "criterion": {"name": "ria", "a": a}},
               sparsity=0.5, schedule="manual")


def test_calibration_on_the_meta_device_is_refused():
    p = Pruner(nn.Sequential(nn.Linear(4, 4)), "wanda", sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="'meta' holds no values"):
        p.calibrate([torch.randn(2, 4)], device="meta")


def test_float_masks_are_keep_masks_only_when_zero_or_one():
    p = Pruner(nn.Sequential(nn.Linear(4, 2)), "magnitude", sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="holds values other than 0 and 1"):
        p.set_masks({"0.weight": torch.full((2, 4), 0.3)})  # cast to bool, every entry would be kept
    assert p.masks["0.weight"].all()  # nothing installed
    p.set_masks({"0.weight": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])})
    assert p.masks["0.weight"].dtype == torch.bool and int(p.masks["0.weight"].sum()) == 4
    with pytest.raises(ConfigError, match=r"has shape \(4, 2\), parameter \(2, 4\)"):
        p.set_masks({"0.weight": torch.ones(4, 2, dtype=torch.bool)})


def test_a_channel_permutation_on_a_model_without_transformer_mlps_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    p = Pruner(model, {"name": "wanda", "granularity": {"name": "nm", "permute": "lsa"}}, sparsity=0.5,
               schedule="manual")
    p.calibrate([torch.randn(2, 3, 6, 6)])
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ConfigError, match="has none: drop permute for plain N:M"):
        p.prune(0.5)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_distillation_without_retraining_and_too_many_context_lengths():
    from prunelab.experiment import load_recipe
    from prunelab.experiment.evaluation import MAX_LENGTHS, perplexity_at

    with pytest.raises(ConfigError, match="prune.distill: distillation is the loss of retraining"):
        load_recipe(None, ["prune.distill={}", "prune.retrain.epochs=0", "prune.final_epochs=0"])
    load_recipe(None, ["prune.distill={}", "prune.retrain.epochs=0", "prune.final_epochs=1"])  # the last round trains
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=f"give 1 to {MAX_LENGTHS} context lengths"):
        perplexity_at({"m": model}, None, list(range(1, 2001)))  # refused before the first of 2,000 passes
    with pytest.raises(ConfigError, match="context lengths repeat"):
        perplexity_at({"m": model}, None, [4, 4])


@pytest.mark.parametrize("key", ["name", "seed"])
def test_model_kwargs_naming_the_model_or_the_seed_is_one_sentence(key, tmp_path, capsys):
    """Found by the fuzz test: model.kwargs={name: ...} collided with build_model's own name (a TypeError)."""
    from prunelab.cli import main

    assert main(["run", "quickstart", f"model.kwargs={{{key}: 3}}", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key} is not a model argument here" in err[0]
    assert not any(tmp_path.iterdir())


def test_a_library_error_is_named_by_its_first_line_or_its_type():
    from prunelab.errors import first_line

    assert first_line(RuntimeError("shape mismatch\n  at layer 3")) == "shape mismatch"
    assert first_line(ValueError("x" * 500), 120) == "x" * 120
    assert first_line(KeyError()) == "KeyError" and first_line(IndexError("\n")) == "IndexError"
