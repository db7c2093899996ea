"""Training budgets: steps and tokens instead of epochs, counted exactly, the learning rate over the budget."""
import math

import pytest
import torch
from torch import nn

from prunelab.training import OptimConfig, Trainer, build_optimizer


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, x):
        return self.out(self.emb(x))


def _lm_batches(n: int, batch: int = 4, seq: int = 8, last: int | None = None):
    g = torch.Generator().manual_seed(0)
    sizes = [batch] * n if last is None else [batch] * (n - 1) + [last]
    return [(torch.randint(0, 11, (b, seq), generator=g), torch.randint(0, 11, (b, seq), generator=g)) for b in sizes]


class Rates:
    def __init__(self) -> None:
        self.seen = []

    def on_batch_end(self, trainer, step, loss):
        self.seen.append(trainer.optimizer.param_groups[0]["lr"])


def test_a_step_budget_crosses_epochs_and_stops_exactly():
    torch.manual_seed(0)
    model = TinyLM()
    cfg = OptimConfig(epochs=1, max_steps=7, optimizer="adamw", lr=0.01)
    t = Trainer(model, build_optimizer(model, cfg), cfg, _lm_batches(3), progress=False, task="causal_lm")
    history = t.fit()
    assert t.global_step == 7 and len(history) == 3  # epochs 1, 2 and one step of 3 (epochs=1 is replaced)
    assert [h["steps"] for h in history] == [3, 6, 7] and t.targets == 7 * 32


def test_a_token_budget_is_counted_exactly_with_a_short_last_batch():
    model = TinyLM()
    batches = _lm_batches(3, last=1)  # 32 + 32 + 8 tokens an epoch
    cfg = OptimConfig(train_tokens=100, optimizer="sgd", lr=0.01)
    t = Trainer(model, build_optimizer(model, cfg), cfg, batches, progress=False, task="causal_lm")
    t.fit()
    # 32, 64, 72 (end of epoch 1), 104 >= 100: four steps, and every token of them counted
    assert (t.global_step, t.targets) == (4, 104)
    clf = nn.Linear(3, 2)
    samples = Trainer(clf, build_optimizer(clf, cfg), cfg.model_copy(update={"train_tokens": 9}),
                      [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))] * 2, progress=False)
    samples.fit()  # a classifier's targets are its samples: 4, 8, 12 >= 9
    assert (samples.global_step, samples.targets) == (3, 12)


def test_the_learning_rate_follows_the_budget_not_the_epochs():
    """A cosine over a 10-step budget on a 4-batch loader: 0.5 lr (1 + cos(pi k / 10)) before step k."""
    model = TinyLM()
    cfg = OptimConfig(epochs=50, max_steps=10, optimizer="sgd", lr=0.2, momentum=0.0, lr_schedule="cosine")
    rates = Rates()
    Trainer(model, build_optimizer(model, cfg), cfg, _lm_batches(4), progress=False, task="causal_lm",
            hooks=[rates]).fit()
    assert rates.seen == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    tokens = OptimConfig(train_tokens=320, optimizer="sgd", lr=0.2, momentum=0.0, warmup_epochs=1)
    rates = Rates()  # 320 tokens = 10 steps of 32; warm-up over the first epoch (4 steps), then the cosine
    Trainer(model, build_optimizer(model, tokens), tokens, _lm_batches(4), progress=False, task="causal_lm",
            hooks=[rates]).fit()
    warm = [0.2 * (k + 1) / 4 for k in range(4)]  # linear, a step getting the rate of its end
    cos = [0.1 * (1 + math.cos(math.pi * (k / 4 - 1) / 1.5)) for k in range(4, 10)]  # 1.5 epochs left
    assert rates.seen == pytest.approx(warm + cos)


def test_epochs_alone_keep_their_rates():
    cfg = OptimConfig(epochs=4, lr=2.0, lr_schedule="cosine", warmup_epochs=1)
    from prunelab.training import lr_at

    assert [lr_at(cfg, e) for e in range(4)] == pytest.approx([2.0, 2.0, 1 + math.cos(math.pi / 3),
                                                               1 + math.cos(2 * math.pi / 3)])
    with pytest.raises(ValueError, match="not both"):
        OptimConfig(max_steps=3, train_tokens=10)
