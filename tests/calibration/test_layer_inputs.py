"""What calibration sees at each kind of layer: the query and memory thirds of a cross-attention, a recurrent
layer's inputs and previous states, grouped, depthwise and padded convolutions, and the weights a parent's own
forward reads (named with the glob to exclude, or left dense with the reason)."""
import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.calibration import input_stats


class _Cross(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, q, kv):
        return self.mha(q, kv, kv)[0]


def test_cross_attention_thirds_see_their_own_inputs():
    """The packed in_proj_weight of a cross-attention: the query third's statistics are the query's, the key and
    value thirds' the memory's (by hand), though query and memory differ in length."""
    q, kv = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    model = _Cross()
    stats = input_stats(model, {"w": model.mha.in_proj_weight}, [(q, kv)], samples=2, pairs=False)
    sq = stats["w"].sq
    assert sq.shape == (3, 4)
    assert torch.allclose(sq[0], q.reshape(-1, 4).square().sum(0)) and torch.allclose(sq[1], kv.reshape(-1, 4).square().sum(0))
    assert torch.allclose(sq[2], sq[1])


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_weights_see_their_layer_inputs_and_previous_states(kind):
    """Checked against the module itself: the last layer's hh rows are its own outputs shifted by one step (the
    reverse direction backwards, starting from the given initial state), and layer 1's ih rows are the outputs
    of a one-layer module holding layer 0's weights."""
    torch.manual_seed(0)
    rnn = kind(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.double)
    h0 = torch.randn(4, 2, 4, dtype=torch.double)
    hx = (h0, torch.randn(4, 2, 4, dtype=torch.double)) if kind is nn.LSTM else h0
    names = ["weight_ih_l0", "weight_ih_l1", "weight_hh_l1", "weight_hh_l1_reverse"]
    model = _Recurrent(rnn, hx)
    stats = input_stats(model, {n: getattr(rnn, n) for n in names}, [x], samples=2, gram=True)
    with torch.no_grad():
        out = rnn(x, hx)[0].transpose(0, 1)  # (T, N, 2H) of the top layer
        low = kind(3, 4, num_layers=1, bidirectional=True, batch_first=True).double()
        low.load_state_dict({k: v for k, v in rnn.state_dict().items() if "_l0" in k})
        below = low(x, tuple(h[:2] for h in hx) if kind is nn.LSTM else hx[:2])[0].reshape(-1, 8)
    fwd = torch.cat([h0[2][None], out[:-1, :, :4]]).reshape(-1, 4)
    bwd = torch.cat([out[1:, :, 4:], h0[3][None]]).reshape(-1, 4)
    for name, rows in (("weight_ih_l0", x.reshape(-1, 3)), ("weight_ih_l1", below), ("weight_hh_l1", fwd),
                       ("weight_hh_l1_reverse", bwd)):
        assert torch.allclose(stats[name].gram, rows.T @ rows, atol=1e-9), name


class _Recurrent(nn.Module):
    def __init__(self, rnn, hx):
        super().__init__()
        self.rnn, self.hx = rnn, hx

    def forward(self, x):
        return self.rnn(x, self.hx)[0]


def test_grouped_and_depthwise_convolutions_calibrate_per_group():
    """A group's output channels see only its input channels: Wanda's column norms and SparseGPT's Gram matrix
    are per group, by hand from the unfolded inputs of each group; no exclude list is needed."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    grouped, depthwise = nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    model = nn.Sequential(grouped, nn.ReLU(), depthwise)
    x = torch.randn(5, 4, 6, 6)
    stats = input_stats(model, {"g": grouped.weight, "d": depthwise.weight}, [x], samples=5, gram=True)
    cols = F.unfold(x, 3, padding=1)  # (N, 4 * 9, L): channel-major columns
    for gi in range(2):
        rows = cols[:, gi * 18:(gi + 1) * 18].transpose(1, 2).reshape(-1, 18)
        assert torch.allclose(stats["g"].sq[gi], rows.square().sum(0), rtol=1e-5)
        assert torch.allclose(stats["g"].gram[gi], rows.T @ rows, rtol=1e-4, atol=1e-4)
    assert stats["d"].sq.shape == (6, 9) and stats["d"].gram.shape == (6, 9, 9)
    for method in ("wanda", "sparsegpt"):
        m = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6))
        m.load_state_dict(model.state_dict())
        p = Pruner(m, method, sparsity=0.5, schedule="manual")
        p.calibrate([x])
        p.prune(0.5)
        assert p.masks.sparsity() == pytest.approx(0.5, abs=0.02), method
        with torch.no_grad():
            assert torch.isfinite(m(x)).all()


class _Functional(torch.nn.Module):
    """Swin-style: the parent reads its child's weight itself (F.linear), so no hook on the child fires."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.ModuleDict({"qkv": torch.nn.Linear(4, 4),
                                                                "out": torch.nn.Linear(4, 4)}) for _ in range(2)])

    def forward(self, x):
        for b in self.blocks:
            x = b["out"](torch.nn.functional.linear(x, b["qkv"].weight, b["qkv"].bias))
        return x


def test_a_weight_read_by_a_functional_call_is_named_with_the_glob_to_exclude():
    x = torch.randn(8, 4)
    p = Pruner(_Functional(), "wanda", sparsity=0.5, schedule="manual")
    p.calibrate([x])
    with pytest.raises(ConfigError, match=r"never reached blocks.0.qkv.weight.*: .*"
                                          r"F.linear\(x, self.qkv.weight\).*exclude \['blocks.\*.qkv.weight'\]"):
        p.prune(0.5)
    q = Pruner(_Functional(), "wanda", sparsity=0.5, schedule="manual", targets={"exclude": ["blocks.*.qkv.weight"]})
    q.calibrate([x])
    q.prune(0.5)
    assert sorted(q.masks) == ["blocks.0.out.weight", "blocks.1.out.weight"]


@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(3, 4, 3, padding="valid"), lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=2),
    lambda: nn.Conv2d(3, 4, (2, 3), padding="same"), lambda: nn.Conv1d(3, 4, 4, padding="same"),
    lambda: nn.Conv2d(4, 4, 3, padding=(1, 2), stride=2, groups=2)], ids=["valid", "same-even-dilated",
                                                                           "same-2x3", "conv1d-same", "grouped"])
def test_the_rows_calibration_observes_are_the_ones_the_convolution_multiplies(conv):
    """Whatever the padding ("valid", "same" with an even kernel, numbers): the observed input rows times the
    flattened weight give the layer's output, so Wanda's norms and SparseGPT's Gram matrix are of its real inputs."""
    from prunelab.calibration.observers import _rows

    torch.manual_seed(0)
    m = conv()
    x = torch.randn(2, m.in_channels, *(7,) * (m.weight.dim() - 2))
    with torch.no_grad():
        y = m(x) - m.bias.view(1, -1, *(1,) * (m.weight.dim() - 2))
        rows = _rows(m, x)
        g = m.groups
        w = m.weight.flatten(1).view(g, m.out_channels // g, -1)
        out = torch.einsum("grc,gnc->gnr", w, rows if g > 1 else rows[None])  # (groups, N * L, rows per group)
    want = y.flatten(2).permute(0, 2, 1).reshape(-1, g, m.out_channels // g).permute(1, 0, 2)
    assert torch.allclose(out, want, atol=1e-5)


class _Mixer(nn.Module):
    """A Mamba-style mixer: its forward passes conv1d.weight to F.conv1d itself, so no hook on conv1d ever fires."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 8)
        self.conv1d = nn.Conv1d(16, 16, 3, groups=16, padding=2)

    def forward(self, x):
        h = self.inp(x).transpose(1, 2)
        h = torch.nn.functional.conv1d(h, self.conv1d.weight, self.conv1d.bias, padding=2, groups=16)
        return self.out(h[..., :x.shape[1]].transpose(1, 2))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_weight_its_parent_reads_itself_is_left_dense_and_said_so_unless_named(method):
    torch.manual_seed(0)
    model = _Mixer()
    x = torch.randn(2, 5, 8)
    before = model.conv1d.weight.detach().clone()
    pruner = Pruner(model, method, sparsity=0.5, schedule="manual", example_inputs=x)
    assert "conv1d.weight" not in pruner.params and "parent's forward" in pruner.skipped["conv1d.weight"]
    pruner.calibrate([x])
    pruner.prune(0.5)
    assert torch.equal(model.conv1d.weight, before) and pruner.masks.sparsity() == pytest.approx(0.5)
    assert "conv1d.weight" in pruner.accounting()["skipped"]
    named = Pruner(_Mixer(), method, sparsity=0.5, schedule="manual", example_inputs=x,
                   targets={"include": ["inp.weight", "conv1d.weight"]})  # asked for on purpose: refused
    with pytest.raises(ConfigError, match="never reached conv1d.weight"):
        named.calibrate([x])
        named.prune(0.5)
