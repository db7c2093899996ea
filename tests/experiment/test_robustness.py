"""Attacks checked against analytic results on a linear model."""
import pytest
import torch
from torch import nn

from prunelab.analysis.robustness import accuracy_under_attack, fgsm, pgd

MEAN, STD = (0.5,), (0.25,)


def _linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    return model


def _norm(p):
    return (p - 0.5) / 0.25


def test_fgsm_moves_every_pixel_by_eps_along_the_weight_difference():
    model = _linear()
    w = model[1].weight.detach()
    pix = torch.full((3, 1, 4, 4), 0.5)
    y = torch.tensor([0, 1, 0])
    adv_pix = fgsm(model, _norm(pix), y, 0.1, MEAN, STD) * 0.25 + 0.5
    # d CE / d x = p_other * (w_other - w_y) / std: its sign is that of w_other - w_y
    for i, label in enumerate(y.tolist()):
        expect = 0.5 + 0.1 * (w[1 - label] - w[label]).sign().view(1, 4, 4)
        assert torch.allclose(adv_pix[i], expect, atol=1e-6)


def test_linear_model_flips_exactly_beyond_the_analytic_radius():
    model = _linear()
    w = model[1].weight.detach()
    pix = torch.full((1, 1, 4, 4), 0.5)
    with torch.no_grad():
        logits = model(_norm(pix))[0]
    y = logits.argmax().view(1)
    label = int(y)
    dw = (w[label] - w[1 - label]) / 0.25  # logit margin per unit of pixel change
    margin = float(logits[label] - logits[1 - label])
    radius = margin / float(dw.abs().sum())  # the smallest L-inf perturbation that flips the decision
    assert radius < 0.5  # inside [0, 1], so clipping plays no part
    for eps, flips in ((radius * 0.98, False), (radius * 1.02, True)):
        for adv in (fgsm(model, _norm(pix), y, eps, MEAN, STD),
                    pgd(model, _norm(pix), y, eps, MEAN, STD, steps=20, random_start=True,
                        generator=torch.Generator().manual_seed(0))):
            assert (model(adv).argmax(1) != y).item() == flips


def test_pgd_stays_in_the_ball_and_one_step_equals_fgsm():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = _norm(torch.rand(5, 1, 4, 4))
    y = torch.randint(0, 3, (5,))
    one = pgd(model, x, y, 0.2, MEAN, STD, steps=1, step_size=0.2, random_start=False)
    assert torch.allclose(one, fgsm(model, x, y, 0.2, MEAN, STD), atol=1e-6)
    adv = pgd(model, x, y, 0.1, MEAN, STD, steps=7, generator=torch.Generator().manual_seed(1))
    delta = (adv - x) * 0.25
    assert delta.abs().max() <= 0.1 + 1e-6
    pix = adv * 0.25 + 0.5
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6


def test_accuracy_under_attack_is_monotone_on_a_trained_model():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 4, 4)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad(); nn.functional.cross_entropy(model(_norm(x)), y).backward(); opt.step()
    loader = [(_norm(x[i:i + 64]), y[i:i + 64]) for i in range(0, 256, 64)]
    clean = accuracy_under_attack(model, loader, "none", 0.0, MEAN, STD)
    accs = [accuracy_under_attack(model, loader, "pgd", e, MEAN, STD, steps=10) for e in (0.01, 0.05, 0.2)]
    assert clean > 0.9 and clean >= accs[0] >= accs[1] >= accs[2] and accs[2] < 0.2
    # samples=100 attacks exactly the first 100 samples, in loader order
    first_100 = [(_norm(x[:64]), y[:64]), (_norm(x[64:100]), y[64:100])]
    fgsm_100 = accuracy_under_attack(model, loader, "fgsm", 0.05, MEAN, STD, samples=100)
    assert fgsm_100 == accuracy_under_attack(model, first_100, "fgsm", 0.05, MEAN, STD)
    assert fgsm_100 != accuracy_under_attack(model, loader, "fgsm", 0.05, MEAN, STD)
    with pytest.raises(ValueError):
        accuracy_under_attack(model, loader, "cw", 0.1, MEAN, STD)
