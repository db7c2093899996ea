"""timm models as users build them (small inputs): Wanda and SparseGPT at 50 % reach the budget over their
targets with no exclude list, and channel pruning at 0.5 either removes channels and shrinks to the masked
model's outputs (shrink checks in float64) or names what is out of reach."""
import pytest
import torch

from prunelab import Pruner
from prunelab.export import shrink

timm = pytest.importorskip("timm")

MODELS = {  # name: (create_model arguments, image size)
    "convnext_atto": ({}, 32),
    "deit_tiny_patch16_224": ({"img_size": 32}, 32),
    "levit_128s": ({"img_size": 64}, 64),
    "mixer_s16_224": ({"img_size": 32}, 32),
    "fastvit_t8": ({}, 32),
}


def _build(name):
    kw, size = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kw).eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_calibrated_methods_reach_half_of_every_target(name):
    for method in ("wanda", "sparsegpt"):
        model, x = _build(name)
        p = Pruner(model, {"name": method, "samples": 2}, sparsity=0.5, schedule="manual")
        p.calibrate([x], targets=False)
        p.prune(0.5)
        s = p.summary()
        assert abs(s["sparsity"] - 0.5) < 0.01, (method, s["sparsity"])
        assert not s["skipped"] and torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", MODELS)
def test_channel_pruning_shrinks_to_the_masked_outputs(name):
    model, x = _build(name)
    p = Pruner(model, "l1_filter", sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5, final=True)
    ch = p.summary()["channels"]
    assert ch["removed"] >= 0.45 * ch["prunable"] > 0
    before = sum(q.numel() for q in model.parameters())
    small, widths = shrink(model, p.masks, x, graph=p.channels)  # raises unless the outputs match
    assert widths and sum(q.numel() for q in small.parameters()) < 0.8 * before
