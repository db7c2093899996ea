"""Distillation: the loss by hand, the teacher left alone, and a recipe's recovery by distillation end to end."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab import ConfigError
from prunelab.training.distill import Distillation


def test_the_loss_by_hand():
    torch.manual_seed(0)
    teacher = nn.Linear(3, 4)
    student = nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    d = Distillation(teacher, alpha=0.3, temperature=2.0)
    zs = student(x)
    with torch.no_grad():
        zt = teacher(x)
    p_t = (zt / 2).softmax(-1)
    kl = (p_t * (p_t.log() - (zs / 2).log_softmax(-1))).sum(-1).mean()  # KL(teacher || student), per sample
    expected = 0.3 * 4 * kl + 0.7 * F.cross_entropy(zs, y)
    assert d(x, zs, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert Distillation(teacher, alpha=0.0)(x, zs, y).item() == pytest.approx(F.cross_entropy(zs, y).item())
    assert Distillation(student, alpha=1.0)(x, student(x), y).item() == pytest.approx(0.0, abs=1e-6)  # itself


def test_the_teacher_gets_no_gradient_and_is_not_changed():
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 4), nn.Linear(3, 4)
    before = teacher.weight.clone()
    d = Distillation(teacher, alpha=0.5, temperature=3.0)
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    d(x, student(x), y).backward()
    assert teacher.weight.grad is None and student.weight.grad is not None
    assert torch.equal(teacher.weight, before) and not teacher.training


def test_tokens_of_a_causal_lm_each_count_once():
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    d = Distillation(nn.Identity(), alpha=1.0, temperature=1.0, task="causal_lm")
    per_token = F.kl_div(zs.log_softmax(-1), zt.log_softmax(-1), reduction="none", log_target=True).sum(-1)
    assert d(zt, zs, torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(per_token.mean().item(), rel=1e-6)


@pytest.mark.parametrize("kw,match", [({"alpha": 1.5}, "alpha must be"), ({"temperature": 0}, "temperature must be"),
                                      ({"teacher": "dense"}, "must be an nn.Module")])
def test_bad_settings_are_one_sentence(kw, match):
    with pytest.raises(ConfigError, match=match):
        Distillation(**{"teacher": nn.Linear(2, 2), **kw})


def test_zeros_survive_distillation_steps_with_adamw():
    from prunelab import Pruner
    from prunelab.training import OptimConfig, Trainer, build_optimizer

    teacher, student = _mlp(0), _mlp(1)
    p = Pruner(student, "magnitude", sparsity=0.5, schedule="manual")
    p.prune(0.5)
    zero = {n: m == 0 for n, m in p.masks.items()}
    cfg = OptimConfig(max_steps=6, optimizer="adamw", lr=0.05, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    before = {n: q.detach().clone() for n, q in student.named_parameters()}
    Trainer(student, build_optimizer(student, cfg), cfg, batches, pruner=p, progress=False,
            loss_fn=Distillation(teacher, 0.7, 2.0, hidden=["0"], student=student)).fit()
    params = dict(student.named_parameters())
    assert all(bool((params[n][z] == 0).all()) for n, z in zero.items())
    assert any(not torch.equal(params[n][~z], before[n][~z]) for n, z in zero.items())  # it did train


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_the_hidden_state_term_by_hand_leaves_removed_channels_out():
    teacher, student = _mlp(0), _mlp(1)
    with torch.no_grad():  # channel 2 of the student's hidden layer removed, as a width-pruned student has it
        student[0].weight[2] = 0
        student[0].bias[2] = 0
    d = Distillation(teacher, alpha=1.0, temperature=1.0, hidden=["0"], hidden_weight=0.5, student=student)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    out = student(x)
    with torch.no_grad():
        hs, ht = student[0](x), teacher[0](x)
        zt = teacher(x)
    keep = [0, 1, 3]
    mse = ((hs[:, keep] - ht[:, keep]) ** 2).sum() / (ht[:, keep] ** 2).sum()
    kl = F.kl_div(out.log_softmax(-1), zt.log_softmax(-1), reduction="batchmean", log_target=True)
    loss = d(x, out, y)
    assert loss.item() == pytest.approx((kl + 0.5 * mse).item(), rel=1e-5)
    loss.backward()
    assert student[0].weight.grad is not None and all(p.grad is None for p in teacher.parameters())
    student.eval()
    student(x)  # an evaluation of the student catches nothing
    assert not d._caught["student"]
    d.close()
    student.train()
    student(x)
    assert not d._caught["student"]  # hooks removed


def test_hidden_layers_by_glob_and_bad_ones_in_one_sentence():
    teacher, student = _mlp(0), _mlp(1)
    assert Distillation(teacher, hidden=["*"], student=student).layers == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="'model.layers.9' names no module of the model; some of its modules: 0, 1"):
        Distillation(teacher, hidden=["model.layers.9"], student=student)
    with pytest.raises(ConfigError, match="needs the student"):
        Distillation(teacher, hidden=["0"])
    narrow = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    d = Distillation(teacher, hidden=["0"], student=narrow)
    x = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="distil the masked model"):
        d(x, narrow(x), torch.tensor([0, 1]))


def test_a_stream_is_recut_at_another_context_length():
    from prunelab.data.loader import TensorLoader
    from prunelab.data.text import windows
    from prunelab.experiment.evaluation import stream_of

    stream = torch.arange(52)
    x, y = windows(stream, 7)  # 7 windows of 7 + 1 tokens: the stream's first 50 tokens
    assert torch.equal(stream_of(TensorLoader(x, y, 3)), stream[:50])
    x4, y4 = windows(stream_of(TensorLoader(x, y, 3)), 4)
    assert x4[1].tolist() == [4, 5, 6, 7] and y4[1].tolist() == [5, 6, 7, 8]


def test_a_recipe_recovers_by_distillation(tmp_path, capsys):
    pytest.importorskip("transformers")
    from prunelab.cli import main

    over = ["model.kwargs={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 48, num_attention_heads: 4, "
            "num_key_value_heads: 2, max_position_embeddings: 16}", "data.seq_len=16", "data.train_tokens=4000",
            "data.eval_tokens=2000", "data.calibration_tokens=2000", "train.epochs=1",
            "prune.method.criterion.samples=16", "prune.retrain.train_tokens=1000",
            "prune.distill={alpha: 0.5, temperature: 2, hidden: ['model.layers.*']}",
            "prune.controls=[scratch_e, scratch_b, lottery_reset]", "train.train_tokens=2000"]
    assert main(["run", "llama_pystdlib_units", *over, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("llama_pystdlib_units"))
    state = json.loads((run / "stages" / "round_01" / "state.json").read_text())
    # the teacher is read from the dense stage, not saved again: the round holds one model of the dense size
    weights = {f.name: f.stat().st_size for f in (run / "stages" / "round_01").iterdir()}
    assert weights["model.safetensors"] == (run / "stages" / "dense" / "model.safetensors").stat().st_size
    assert not [n for n in weights if "teacher" in n]
    assert state["distill"] == {"alpha": 0.5, "temperature": 2.0, "hidden": ["model.layers.*"], "hidden_weight": 1.0}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["shrunk"]["config"]["intermediate_size"] == 24  # the recovered model still shrinks
    # token budgets: batches of 32 windows x 16 tokens = 512 tokens a step, so 2000 -> 4 steps, 1000 -> 2
    assert [(r["stage"], r["steps"], r["tokens"]) for r in summary["stages"]] == [("dense", 4, 2048),
                                                                                  ("round_01", 2, 1024)]
    scratch, longer = summary["controls"]["scratch_e"], summary["controls"]["scratch_b"]
    assert 1 < scratch["test_ppl"] < 256 and scratch["tokens"] == 2048  # the dense training's tokens
    from prunelab.experiment.compare import compare_runs, table_lines

    lines, shown = table_lines(compare_runs([run]))  # the Rethinking table in perplexity
    assert shown == ["Unpruned", "Fine-tuned", "Scratch-E", "Scratch-B", "Lottery reset"]
    assert f"| {scratch['test_ppl']:.2f} |" in lines[2]
    lottery = summary["controls"]["lottery_reset"]  # the shrunk architecture from the run's own initial weights
    assert lottery["tokens"] == 2048 and 1 < lottery["test_ppl"] < 256
    ratio = longer["flops_full"] / longer["flops_pruned"]  # Scratch-B: tokens x the FLOP ratio, whole steps
    assert longer["tokens"] == 512 * -(-round(2000 * ratio) // 512) and longer["tokens"] > 2048
    # perplexity at half the window and at the window (the summary's own figure, on the same windows)
    at = summary["eval"]["perplexity_at"]
    assert list(at) == ["8", "16"] and at["16"] == pytest.approx({"dense": summary["dense_ppl"],
                                                                  "pruned": summary["pruned_ppl"]}, rel=1e-6)
    capsys.readouterr()
    assert main(["eval", str(run), "--lengths", "4,16"]) == 0
    out = capsys.readouterr().out
    assert f"| 16 | {at['16']['dense']:.4f} | {at['16']['pruned']:.4f} |" in out and "| 4 |" in out
    assert main(["eval", str(run), "--lengths", "64"]) == 2  # longer than the model's 16 positions
    assert "context length 64 is longer than the 16 positions" in capsys.readouterr().err
    assert main(["eval", str(run), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    import importlib.util
    if importlib.util.find_spec("lm_eval") is None:
        assert len(err) == 1 and "lm-eval, which is not installed" in err[0]
    else:  # installed: the run reads bytes, and lm-eval's tasks are text
        assert len(err) == 1 and "reads bytes" in err[0]


def test_a_fresh_init_of_a_hugging_face_model_is_its_own():
    """Scratch controls of a language model start from transformers' initialisation, nothing of the trained
    weights left (the RMSNorm gains included)."""
    transformers = pytest.importorskip("transformers")
    from prunelab.models import reinit

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    reinit(model, 3)
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(config.initializer_range, rel=0.15)
    assert bool((model.model.norm.weight == 1).all()) and model.lm_head.weight is model.model.embed_tokens.weight
    again = reinit(transformers.LlamaForCausalLM(config), 3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
