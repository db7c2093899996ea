"""Attention heads of nn.MultiheadAttention: a head whose out_proj columns are zero adds nothing, and
HeadPrunedAttention without it computes the same outputs, under torch's masks and layouts."""
import copy

import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.structure.heads import HeadPrunedAttention, attention_heads
from prunelab.export.shrunk import apply_widths
from prunelab.structure.surgery import shrink


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_pruned_attention_equals_torch_with_those_heads_silenced(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).double().eval()
    (a,) = attention_heads(nn.ModuleDict({"att": mha}), {"att.in_proj_weight", "att.out_proj.weight"})
    dropped = [1, 3]
    silenced = copy.deepcopy(mha)
    with torch.no_grad():
        for h in dropped:
            silenced.out_proj.weight[:, a.columns(h)] = 0
    small = HeadPrunedAttention.from_attention(mha, torch.tensor([0, 2])).eval()
    x = torch.randn(2, 5, 16, dtype=torch.double)
    if not batch_first:
        x = x.transpose(0, 1)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal, "key_padding_mask": pad}):
        want, want_w = silenced(x, x, x, **kwargs)
        got, got_w = small(x, x, x, **kwargs)
        assert torch.allclose(got, want, atol=1e-12) and got_w.shape == want_w.shape
    full, _ = mha(x, x, x)
    assert not torch.allclose(full, want)  # the dropped heads did contribute before


def test_transformer_encoder_loses_half_its_heads_and_shrinks_exactly():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 16)
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)
    assert p.summary()["channels"]["heads"] == {"prunable": 8, "removed": 4}
    small, widths = shrink(model, p.masks, x)
    attn = small[0].layers[0].self_attn
    assert isinstance(attn, HeadPrunedAttention) and attn.num_heads == 2 and attn.in_proj_weight.shape == (24, 16)
    with torch.no_grad():
        masked = copy.deepcopy(model)
        p.masks.apply(masked)
        assert (masked.double()(x.double()) - copy.deepcopy(small).double()(x.double())).abs().max() <= 1e-10
    rebuilt = apply_widths(copy.deepcopy(model), widths)  # the width manifest rebuilds the same shapes
    rebuilt.load_state_dict(small.state_dict())
    assert torch.equal(rebuilt(x), small(x))
