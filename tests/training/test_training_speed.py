"""The training loop at the device's speed: running metrics read every log_every steps (not per step), bf16
autocast and channels-last memory with masks that stay exact, fp16 and compile refused where they cannot run."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.errors import ConfigError
from prunelab.training import OptimConfig, Trainer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def _data(steps, batch=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(steps)]


def _train(steps, hooks=None, **cfg):
    model = _net()
    pruner = Pruner(model, "magnitude", sparsity=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conf = OptimConfig(epochs=1, lr=0.05, lr_schedule="constant", **cfg)
    history = Trainer(model, opt, conf, _data(steps), pruner=pruner, progress=False, hooks=hooks).fit()
    return model, pruner, history[-1]


class _Reads:
    """Counts Python reads of tensor values (each a host sync on a GPU)."""

    def __enter__(self):
        self.n, self.saved = 0, {k: getattr(torch.Tensor, k) for k in ("item", "__float__", "__int__", "__bool__")}

        def wrap(fn):
            def inner(t, *a, **k):
                self.n += 1
                return fn(t, *a, **k)
            return inner
        for k, fn in self.saved.items():
            setattr(torch.Tensor, k, wrap(fn))
        return self

    def __exit__(self, *exc):
        for k, fn in self.saved.items():
            setattr(torch.Tensor, k, fn)


def test_host_reads_do_not_grow_with_the_steps_and_the_metrics_are_the_per_step_ones():
    with _Reads() as short:
        _train(5)
    with _Reads() as long:
        _, _, metrics = _train(20)
    assert long.n == short.n  # read at the epoch's end (and every log_every = 50 steps), not per step
    losses = []
    _, _, per_step = _train(20, hooks=[type("H", (), {"on_batch_end": lambda s, t, step, loss: losses.append(loss)})()])
    assert len(losses) == 20 and all(isinstance(v, float) for v in losses)
    assert metrics["train_loss"] == per_step["train_loss"] == pytest.approx(sum(losses) / 20, rel=1e-12)
    assert metrics["train_acc"] == per_step["train_acc"]


def test_bf16_autocast_and_channels_last_keep_masks_exact_and_weights_float32():
    ref, _, base = _train(6)
    for cfg in ({"precision": "bf16"}, {"channels_last": True}):
        model, pruner, metrics = _train(6, **cfg)
        for name, p in pruner.params.items():
            assert p.dtype == torch.float32 and bool((p[~pruner.masks[name]] == 0).all())
        if "channels_last" in cfg:
            assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
            # the same arithmetic in another memory layout: the same training up to rounding
            assert metrics["train_loss"] == pytest.approx(base["train_loss"], rel=1e-4)
        else:  # bfloat16 products: close to float32, not equal
            assert metrics["train_loss"] == pytest.approx(base["train_loss"], rel=0.05)
            assert metrics["train_loss"] != base["train_loss"]


def test_fp16_off_cuda_and_compile_where_unsupported_are_one_sentence(monkeypatch):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _train(1, precision="fp16")
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match="torch.compile is not supported"):
        _train(1, compile=True)


def test_compiled_training_matches_eager_and_keeps_masks_exact(monkeypatch):
    """torch.compile traced by dynamo (backend aot_eager here: the same graph capture as inductor, without a C++
    build in the test): the wrapper shares the model's parameters, so the Pruner's masks still hold."""
    import functools

    import torch._dynamo as dynamo

    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported by this build")
    _, _, eager = _train(4)
    dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    frames = dynamo.utils.counters["stats"]["unique_graphs"]
    model, pruner, compiled = _train(4, compile=True)
    assert dynamo.utils.counters["stats"]["unique_graphs"] > frames  # the forward really went through dynamo
    for name, p in pruner.params.items():
        assert bool((p[~pruner.masks[name]] == 0).all())
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    dynamo.reset()


def test_without_a_terminal_long_epochs_say_where_they_are():
    """EpochLine: a line of the running figures within an epoch (at most every ``every`` seconds, read every
    log_every steps), then the epoch's line."""
    from prunelab.experiment.context import EpochLine

    lines = []
    model = _net()
    conf = OptimConfig(epochs=1, lr=0.01, log_every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    Trainer(model, opt, conf, _data(6), progress=False, hooks=[EpochLine(lines.append, every=0.0)]).fit()
    assert [l.split(",")[1] for l in lines[:3]] == [" step 2", " step 4", " step 6"]
    assert "loss" in lines[0] and lines[-1].startswith("stage train: epoch 1 in")
    quiet = []
    Trainer(model, opt, conf, _data(6), progress=False, hooks=[EpochLine(quiet.append, every=3600.0)]).fit()
    assert len(quiet) == 1  # a short epoch: its own line only
