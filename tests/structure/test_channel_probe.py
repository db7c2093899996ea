"""The trial shrink after a channel trace (prunelab.structure.probe): groups whose shrink would break the model are
blocked before any selection, on hand-made models and on ones nobody here wrote (Whisper), and models that keep
tensors of their last forward can still be copied for it."""
import pytest
import torch
from torch import nn

from prunelab import Pruner


def test_a_group_whose_trial_shrink_fails_is_blocked_before_pruning():
    """A width written into the forward (reshape to 8 channels) makes conv2's channels unremovable: the trial
    shrink after the trace blocks that group, the rest prune and the model shrinks to the same outputs."""
    from prunelab.structure.channels import ChannelGraph
    from prunelab.export import shrink
    from prunelab.inputs import max_output_diff

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 5)

        def forward(self, x):
            x = self.conv2(torch.relu(self.conv1(x)))
            return self.fc(x.reshape(x.shape[0], 8, -1).mean(-1))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    trusted = ChannelGraph(Fixed(), x)
    assert all(g.removable for g in trusted.groups)  # the trace alone sees nothing wrong
    p = Pruner(Fixed(), "l1_filter", sparsity=0.5, example_inputs=x)
    blocked = {g.root: g.blockers for g in p.channels.groups if not g.removable}
    assert list(blocked) == ["conv2"] and "trial shrink" in blocked["conv2"][0]
    assert p.summary()["channels"]["removed"] == 4  # half of conv1's channels
    small, _ = shrink(p.model, p.masks, x, graph=p.channels)
    assert small.conv1.out_channels == 4 and small.conv2.out_channels == 8
    assert max_output_diff(p.model.double(), small.double(), x.double()) <= 1e-10


def test_a_model_caching_tensors_of_its_forward_prunes_and_shrinks():
    """RAFT-style: a module keeps a tensor of its last forward pass (with autograd history) as an attribute,
    which deepcopy refuses; the trial shrink and shrink copy it all the same."""
    from prunelab.export import shrink

    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)
            self.cache = []

        def forward(self, x):
            y = torch.relu(self.conv(x))
            self.cache = [y * 2]  # kept after the call, with its graph when gradients are on
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    p = Pruner(Caching(), "l1_filter", sparsity=0.5, example_inputs=x)
    assert p.summary()["channels"]["removed"] == 4
    small, _ = shrink(p.model, p.masks, x, graph=p.channels)
    assert small.conv.out_channels == 4


def test_whisper_channels_prune_and_shrink_with_the_failing_groups_blocked_first():
    """An encoder-decoder taking a dict of inputs: the groups whose trial shrink fails (its shrink used to fail
    with a size mismatch after pruning) are blocked, the rest go and shrink to the masked outputs."""
    transformers = pytest.importorskip("transformers")
    from prunelab.export import shrink
    from prunelab.inputs import max_output_diff

    cfg = transformers.WhisperConfig(vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
                                     max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=1)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    x = {"input_features": torch.randn(1, 8, 32), "decoder_input_ids": torch.tensor([[1, 5, 6]])}
    p = Pruner(model, "l1_filter", sparsity=0.5, schedule="manual", example_inputs=x)
    p.prune(0.5, final=True)
    ch = p.summary()["channels"]
    assert ch["removed"] == ch["prunable"] // 2 > 0
    before = sum(q.numel() for q in model.parameters())
    small, _ = shrink(model, p.masks, x)
    assert sum(q.numel() for q in small.parameters()) < before
    assert max_output_diff(model.double(), small.double(), {**x, "input_features": x["input_features"].double()}) < 1e-8
