"""Device logic without a GPU: a fake CUDA device (FakeTensorMode makes ``cuda`` tensors on this CPU machine
and raises on any cpu/cuda mix) runs forward passes, a Pruner's masks, calibration statistics and shrink's
building of smaller modules; a checkpoint holding CUDA random-number states resumes on the CPU."""
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from prunelab import Pruner
from prunelab.structure.heads import HeadPrunedAttention
from prunelab.experiment.checkpoint import load_checkpoint, rng_state, save_checkpoint
from prunelab.structure.recurrent import RecurrentLayer, build_recurrent, kept_units


@pytest.fixture
def cuda():
    """Inside: tensors made on "cuda" are fake ones of that device; nothing runs on a GPU."""
    with FakeTensorMode(), torch.device("cuda"):
        yield


def test_a_mix_of_devices_is_caught_by_the_fake_device(cuda):
    model = nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="same device"):
        model(torch.randn(3, 4, device="cpu"))


def test_masks_and_calibration_statistics_follow_the_model_onto_the_device(cuda, monkeypatch):
    """Masks are made on the weights' device, and every statistic a method is handed (norms, per-group Gram
    matrices of a grouped convolution) is accumulated there; the decision itself needs real values (a
    threshold is a data-dependent read), so the test stops at the hand-over."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 4))
    x = torch.randn(2, 3, 8, 8)
    handed = []

    class Stop(Exception):
        pass

    def decide(self, ctx, names, named):
        handed.append(ctx.input_stats)
        raise Stop
    monkeypatch.setattr(Pruner, "_decide", decide)
    # the finite checks of the weights and the statistics read values (once each), which fake tensors lack
    monkeypatch.setattr("prunelab.targets.first_not_finite", lambda named: None)
    monkeypatch.setattr("prunelab.calibration.observers.first_not_finite", lambda named: None)
    for method in ("wanda", "sparsegpt"):
        p = Pruner(model, {"name": method, "samples": 2, "sequential": False}, sparsity=0.5, schedule="manual")
        assert all(m.device.type == "cuda" for m in p.masks.values())
        p.calibrate([x], targets=False)
        with pytest.raises(Stop):
            p.prune(0.5)
    assert len(handed) == 2 and all(handed)
    for stats in handed:
        for s in stats.values():
            assert s.tensors() and all(t.device.type == "cuda" for t in s.tensors())
    assert handed[1]["2.weight"].gram.shape == (2, 36, 36)  # one Gram matrix per conv group


def test_shrink_builds_smaller_modules_on_the_device():
    """The modules are fake CUDA ones; the decisions (which units, which heads) are read on the host first, as
    a Pruner's masks are, then the smaller modules are built on the device without reading anything back."""
    kept = torch.zeros(4, 8, dtype=torch.bool)
    kept[:, :3] = True
    layer = RecurrentLayer("rnn", 8, 2, 2, 4)
    units = kept_units(layer, kept)
    chosen = [0, 2]  # heads kept, decided on the host
    with FakeTensorMode(), torch.device("cuda"):
        small = build_recurrent(nn.LSTM(6, 8, num_layers=2, bidirectional=True), layer, units)
        assert small.hidden_size == 3 and small.weight_ih_l1.device.type == "cuda"
        # (its forward would reach cuDNN, which a fake device cannot stand in for: shapes only)
        assert small.weight_ih_l1.shape == (12, 6) and small.weight_hh_l0_reverse.shape == (12, 3)
        heads = HeadPrunedAttention.from_attention(nn.MultiheadAttention(8, 4), chosen)
        assert heads.in_proj_weight.device.type == "cuda" and heads.in_proj_weight.shape == (12, 8)
        q = torch.randn(5, 2, 8)
        assert heads(q, q, q)[0].shape == (5, 2, 8)


def test_a_checkpoint_with_cuda_random_states_resumes_on_the_cpu(tmp_path, monkeypatch):
    """Written where CUDA was in use (its generators' states saved as cuda/<i>), read back here: the CPU
    generator continues and the CUDA states, with no device to take them, are left."""
    import prunelab.experiment.checkpoint as ck

    tensors, meta = rng_state()
    monkeypatch.setattr(ck, "rng_state", lambda: ({**tensors, "cuda/0": torch.zeros(16, dtype=torch.uint8)}, meta))
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ck", model)
    from prunelab.io import read_safetensors

    assert "cuda/0" in read_safetensors(tmp_path / "ck" / "rng.safetensors")[0]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_checkpoint(tmp_path / "ck", nn.Linear(3, 2))
    assert not torch.equal(torch.rand(3), expected)  # the saved CPU state was restored, not the seed's
    torch.set_rng_state(tensors["torch"])
    first = torch.rand(3)
    load_checkpoint(tmp_path / "ck", nn.Linear(3, 2))
    assert torch.equal(torch.rand(3), first)
