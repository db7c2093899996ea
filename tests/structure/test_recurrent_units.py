"""Hidden units of nn.LSTM / nn.GRU / nn.RNN as a unit of structure: chosen by the sum of their gate rows'
scores, the same number in every layer and direction, held at zero exactly, shrunk into a smaller module of the
same class with its readers cut; modules whose units cannot go are named with the reason."""
import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.errors import ConfigError
from prunelab.export import shrink
from prunelab.export.shrunk import apply_widths
from prunelab.inputs import max_output_diff


class Tagger(nn.Module):
    """A Linear feeding the recurrent module (its channels reach the module's inputs), the module's outputs
    read by a classifier over time (the model's output layer)."""

    def __init__(self, kind, bidirectional=True, layers=2):
        super().__init__()
        self.pre = nn.Linear(6, 16)
        self.rnn = kind(16, 8, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(16 if bidirectional else 8, 5)

    def forward(self, x):
        return self.out(self.rnn(torch.relu(self.pre(x)))[0])


class ReadsState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[1][-1])


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.norm, self.fc = nn.LSTM(6, 8, batch_first=True), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.norm(self.rnn(x)[0]))


def _x(n=3):
    return torch.randn(n, 5, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_half_the_units_of_every_layer_and_direction_go_and_the_module_shrinks_exactly(kind):
    torch.manual_seed(0)
    model = Tagger(kind).eval()
    x = _x()
    p = Pruner(model, "l1_filter", sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5, final=True)
    rnn = model.rnn
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[kind]
    for layer in range(2):
        for s in ("", "_reverse"):
            ih, hh = (f"rnn.weight_{k}_l{layer}{s}" for k in ("ih", "hh"))
            # by hand: a unit's score is the L1 norm of its gate rows in both weights; the lowest half goes
            score = sum((getattr(rnn, n.split(".")[1]).detach().abs().sum(1)).reshape(gates, 8).sum(0)
                        for n in (ih, hh))
            gone = set(score.argsort()[:4].tolist())
            rows = p.masks[ih].any(1).reshape(gates, 8)
            assert {j for j in range(8) if not rows[:, j].any()} == gone
            assert bool((rows.all(0) | ~rows.any(0)).all())  # a unit goes with all its gates
            assert not p.masks[hh].reshape(gates, 8, -1)[:, sorted(gone)].any()
    report = p.summary()["channels"]["recurrent"]["rnn"]
    assert report == {"units": 32, "removed": 16, "kept_because": None}
    with torch.no_grad():  # the removed units' states are exactly zero in the masked model
        out = model.rnn(torch.relu(model.pre(x)))[0]
    last = [j for j in range(8) if not p.masks["rnn.weight_ih_l1"].reshape(gates, 8, -1)[:, j].any()]
    assert bool((out[..., last] == 0).all())
    small, widths = shrink(model, p.masks, x, graph=None)
    assert type(small.rnn) is kind and small.rnn.hidden_size == 4 and small.out.in_features == 8
    assert widths["rnn"] == {"type": kind.__name__, "input_size": small.rnn.input_size, "hidden_size": 4}
    fresh = _x(4)
    assert max_output_diff(model.double(), small.double(), fresh.double()) <= 1e-10
    rebuilt = apply_widths(Tagger(kind), widths)  # the width manifest builds the same shapes
    rebuilt.load_state_dict(small.float().state_dict())
    assert max_output_diff(rebuilt.double().eval(), small.double(), fresh.double()) == 0


def test_global_allocation_keeps_the_same_count_in_every_layer_and_the_channels_feeding_the_module_go():
    torch.manual_seed(0)
    model = Tagger(nn.GRU, bidirectional=False).eval()
    x = _x()
    p = Pruner(model, {"name": "l1_filter", "allocation": "global"}, sparsity=0.5, schedule="manual",
               example_inputs=x)
    p.prune(0.5, final=True)
    kept = [int(p.masks[f"rnn.weight_ih_l{k}"].any(1).reshape(3, 8).any(0).sum()) for k in range(2)]
    assert kept[0] == kept[1] < 8
    small, _ = shrink(model, p.masks, x, graph=p.channels)
    assert small.rnn.hidden_size == kept[0] and small.rnn.input_size == small.pre.out_features < 16


def test_a_model_reading_the_final_state_or_normalizing_the_outputs_keeps_its_units_and_says_why():
    with pytest.raises(ConfigError, match="nothing to remove whole.*rnn: its final state read by the model"):
        Pruner(ReadsState(), "l1_filter", sparsity=0.5, example_inputs=_x())
    with pytest.raises(ConfigError, match="rnn: LayerNorm"):
        Pruner(Normed(), "l1_filter", sparsity=0.5, example_inputs=_x())
    p = Pruner(Tagger(nn.LSTM), "l1_filter", sparsity=0.5, example_inputs=_x(),
               targets={"exclude": ["rnn.weight_hh_l1"]})
    assert p.summary()["channels"]["recurrent"]["rnn"]["kept_because"] == "a weight is not a target"
