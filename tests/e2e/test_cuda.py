"""On a real GPU (``pytest -m cuda``; skipped without one, run by ``benchmarks/gpu_check.py``): the recipes whose
data is offline run their first steps with ``device=cuda``; pruning, calibration, shrink, mixed precision and
checkpoints work on the device, and a checkpoint written there resumes on the CPU."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.cli import main

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# first steps only: a few optimizer steps per stage, small text splits
SHORT = ["device=cuda", "train.max_steps=3", "--no-progress"]
TEXT = ["data.train_tokens=16384", "data.calibration_tokens=8192", "data.eval_tokens=8192"]
RETRAIN = ["prune.retrain.max_steps=2"]  # only where the recipe prunes (else the override adds a prune section)
RECIPES = {"quickstart": ["prune.schedule.rounds=2", *RETRAIN], "llama_pystdlib_dense": TEXT,
           "llama_pystdlib_units": TEXT, "gpt2_pystdlib_dense": TEXT, "gpt2_pystdlib_magnitude": TEXT + RETRAIN,
           "gpt2_pystdlib_wanda": TEXT, "gpt2_pystdlib_sparsegpt": TEXT}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_first_steps_on_the_gpu(recipe, tmp_path):
    pytest.importorskip("transformers")
    assert main(["run", recipe, *RECIPES[recipe], *SHORT, "--runs-dir", str(tmp_path)]) == 0


def _llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).cuda().eval()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_methods_on_the_gpu_in_bfloat16(method):
    model = _llama().to(torch.bfloat16)
    x = torch.randint(0, 64, (4, 32), device="cuda")
    p = Pruner(model, {"name": method, "samples": 4}, sparsity=0.5, schedule="manual")
    p.calibrate([(x, x)], targets=True)
    p.prune(0.5)
    assert abs(p.summary()["sparsity"] - 0.5) < 0.01
    for name, m in p.masks.items():
        assert m.device.type == "cuda" and bool((p.params[name][~m] == 0).all())


def test_channel_pruning_and_shrink_on_the_gpu():
    import torchvision

    from prunelab.export import shrink

    model = torchvision.models.resnet18(num_classes=10).cuda().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    p = Pruner(model, "l1_filter", sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5, final=True)
    small, _ = shrink(model, p.masks, x, graph=p.channels)
    assert next(small.parameters()).device.type == "cuda"
    units = Pruner(_llama(), {"name": "transformer_units", "units": ["mlp", "heads"], "criterion": "magnitude"},
                   sparsity=0.5, schedule="manual", example_inputs=torch.randint(0, 64, (1, 8), device="cuda"))
    units.prune(0.5, final=True)
    smaller, changed = shrink(units.model, units.masks, torch.randint(0, 64, (1, 8), device="cuda"),
                              graph=units.channels)
    assert changed["intermediate_size"] == 64 and next(smaller.parameters()).device.type == "cuda"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_masks_exact(precision):
    from prunelab.training import OptimConfig, Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 30 * 30, 10)).cuda()
    pruner = Pruner(model, "magnitude", sparsity=0.8)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(6)]
    cfg = OptimConfig(epochs=1, lr=0.01, lr_schedule="constant", precision=precision, channels_last=True)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), cfg, data, pruner=pruner, progress=False,
            device="cuda").fit()
    for name, p in pruner.params.items():
        assert p.dtype == torch.float32 and bool((p[~pruner.masks[name]] == 0).all())


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path):
    from prunelab.experiment.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = nn.Linear(6, 3).cuda()
    pruner = Pruner(model, "magnitude", sparsity=0.5)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 6, device="cuda")).sum().backward()
    opt.step()
    torch.cuda.manual_seed(7)
    save_checkpoint(tmp_path / "ck", model, pruner.masks, opt)
    cpu = nn.Linear(6, 3)
    cpu_opt = torch.optim.Adam(cpu.parameters())
    masks, _ = load_checkpoint(tmp_path / "ck", cpu, cpu_opt)
    assert torch.equal(cpu.weight, model.weight.cpu()) and all(m.device.type == "cpu" for m in masks.values())
    assert cpu_opt.state_dict()["state"][0]["exp_avg"].device.type == "cpu"
    again = nn.Linear(6, 3).cuda()  # and back onto the GPU, its CUDA generator restored
    torch.cuda.manual_seed(0)
    load_checkpoint(tmp_path / "ck", again)
    torch.cuda.manual_seed(7)
    expected = torch.rand(3, device="cuda")
    load_checkpoint(tmp_path / "ck", again)
    assert torch.equal(torch.rand(3, device="cuda"), expected)


def test_in_memory_batches_are_pinned_for_a_gpu_run(tmp_path):
    from prunelab.experiment import load_recipe
    from prunelab.experiment.context import RunContext

    ctx = RunContext(load_recipe("quickstart", ["device=cuda"]), tmp_path)
    x, y = next(iter(ctx.data.train))
    assert ctx.data.train.pin_memory and x.is_pinned() and y.is_pinned()
