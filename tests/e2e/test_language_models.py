"""Causal language models: the task, byte-level text data, Hugging Face models in and out, a recipe end to end."""
import math
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prunelab import ConfigError, Pruner
from prunelab.analysis import count_flops
from prunelab.data.text import SEPARATOR, byte_stream, split_of, stdlib_files, windows
from prunelab.experiment import Runner, load_recipe
from prunelab.experiment.checkpoint import load_checkpoint, save_checkpoint
from prunelab.experiment.attack import attack_run
from prunelab.experiment.export_run import bench_run, export_run
from prunelab.models import build_model
from prunelab.training import evaluate

transformers = pytest.importorskip("transformers")

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16}


def tiny_gpt2(seed=0):
    return build_model("hf:gpt2", (16,), 256, seed=seed, **TINY)


def test_perplexity_is_exp_of_the_mean_token_loss_by_hand():
    model = tiny_gpt2().eval()
    stream = torch.randint(0, 256, (16 * 5 + 1,), generator=torch.Generator().manual_seed(0))
    x, y = windows(stream, 16)
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]  # uneven batches: every token counts once
    ev = evaluate(model, loader, task="causal_lm")
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 1]).logits for i in range(len(x))])
    nll = -F.log_softmax(logits.double(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    assert nll.numel() == 80
    assert ev["loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert ev["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    assert ev["acc"] == (logits.argmax(-1) == y).float().mean().item()


def test_windows_predict_every_token_once_and_the_split_is_by_file():
    x, y = windows(torch.arange(11), 3)  # 11 tokens: 3 windows of 4, overlapping by one; the tail is dropped
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ConfigError, match="fewer than one window"):
        windows(torch.arange(3), 3)
    files = stdlib_files()
    assert all(files.values()) and files == stdlib_files()  # deterministic: the same lists, in the same order
    seen = [p for split in files.values() for p in split]
    assert len(seen) == len(set(seen))  # no file in two splits
    root = Path(sysconfig.get_paths()["stdlib"])
    for split, paths in files.items():
        assert all(split_of(p.relative_to(root).as_posix()) == split for p in paths[:20])
    first = files["heldout"][0].read_bytes()
    s = byte_stream(files["heldout"], len(first) + 10)  # the first file, the separator, the next file's start
    assert len(s) == len(first) + 10 and s.dtype == torch.int64
    assert s[: len(first)].tolist() == list(first) and int(s[len(first)]) == SEPARATOR[0]
    assert s[len(first) + 1:].tolist() == list(files["heldout"][1].read_bytes()[:9])


@pytest.mark.parametrize("spec", [{"name": "wanda", "samples": 8}, {"name": "sparsegpt", "samples": 8},
                                  {"name": "wanda", "samples": 8, "granularity": "nm"},
                                  {"name": "sparsegpt", "samples": 8, "granularity": "nm"}])
def test_hugging_face_gpt2_pruned_saved_and_reloaded(spec, tmp_path):
    from prunelab.models.hf import save_pretrained

    model = tiny_gpt2()
    x = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(1))
    p = Pruner(model, spec, sparsity=0.5, schedule="manual")
    p.calibrate([x])
    p.prune(0.5)
    assert len(p.params) == 4 and p.masks.sparsity() == pytest.approx(0.5)  # c_attn, c_proj, c_fc, mlp.c_proj
    if spec.get("granularity") == "nm":  # 2:4 along each output's inputs: Conv1D stores (in, out)
        for name, m in p.masks.items():
            assert (p.layouts[name].canonical(m).reshape(-1, 4).sum(-1) == 2).all()
    model.config.use_cache = model.generation_config.use_cache = False  # as prunelab trains and evaluates
    save_pretrained(model, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, back.eval()(x).logits)
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # still tied
    # the folder is for inference: generate() uses the key-value cache; the model in memory is left as it was
    assert back.config.use_cache and back.generation_config.use_cache
    assert model.config.use_cache is False and model.generation_config.use_cache is False


def test_tied_weights_round_trip_through_a_checkpoint(tmp_path):
    model = tiny_gpt2()
    save_checkpoint(tmp_path / "ck", model)
    other = tiny_gpt2(seed=1)
    load_checkpoint(tmp_path / "ck", other, restore_rng=False)
    assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_flops_of_a_gpt2_by_hand():
    model = tiny_gpt2()
    per_token = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16 + 256 * 16  # c_attn, c_proj, c_fc, mlp.c_proj, lm_head
    assert count_flops(model, (16,), dtype=torch.int64)["dense"] == 16 * per_token
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    seq = torch.nn.Sequential()
    seq.forward = lambda x: mha(x, x, x)[0]  # noqa: E731
    seq.add_module("mha", mha)
    assert count_flops(seq, (5, 8))["dense"] == 5 * (3 * 64 + 64)


def test_a_language_model_recipe_end_to_end(tmp_path):
    over = ["model.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 16}", "data.seq_len=16",
            "data.train_tokens=4000", "data.eval_tokens=2000", "data.calibration_tokens=2000", "train.epochs=1",
            "prune.method.samples=16"]
    s = Runner(load_recipe("gpt2_pystdlib_sparsegpt", over), tmp_path / "run", progress=False, log=lambda m: None,
               share_dense=False).run()
    assert s["task"] == "causal_lm" and s["sparsity_prunable"] == pytest.approx(0.5)
    assert 1 < s["dense_ppl"] < 256 and 1 < s["pruned_ppl"] < 256  # trained a little: better than uniform
    assert s["eval"]["tokens"] == (2000 - 1) // 16 * 16
    assert s["eval"]["data"] == f"pystdlib (Python {sys.version.split()[0]} standard library)"
    assert [r["name"] for r in s["untargeted"]] == ["transformer.wte.weight", "transformer.wpe.weight"]
    out = export_run(tmp_path / "run", "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert back.config.n_embd == 16 and float((back.transformer.h[0].mlp.c_fc.weight == 0).float().mean()) >= 0.5
    # the run's byte tokens travel with the model: the folder's tokenizer gives the ids the run trained on
    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    text = "def f(x):\n    return 'héllo'\x00 ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text and len(tok) == back.config.vocab_size
    prompt = tok("import os", return_tensors="pt")["input_ids"]
    assert back.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 13)
    assert back.config.prunelab["sparsity_targets"] == pytest.approx(0.5)  # the folder says what was pruned
    assert back.config.prunelab["method"]["name"] == "sparsegpt"
    bench = bench_run(tmp_path / "run", repeats=1)  # token-id inputs for the latency runs
    assert [r["artifact"] for r in bench["rows"]][:2] == ["unpruned", "dense with zeros"]
    with pytest.raises(ConfigError, match="adversarial attacks need an image classifier"):
        attack_run(tmp_path / "run", [0.1], ["fgsm"])
    from prunelab.experiment.compare import compare_runs, heading, table_lines

    rows = compare_runs([tmp_path / "run"])
    assert heading(rows).startswith("Held-out perplexity (lower is better)")
    assert f"| {s['dense_ppl']:.2f} | {s['pruned_ppl']:.2f} |" in table_lines(rows)[0][2]


def test_without_transformers_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r'pip install "prunelab\[hf\]"'):
        build_model("hf:gpt2", (16,), 256)
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        monkeypatch.delitem(sys.modules, "transformers")
        build_model("hf:/nonexistent/folder", (16,), 256)



def test_text_through_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from prunelab.data import load_data

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(str(tmp_path))
    b = load_data("pystdlib", seq_len=8, tokens={"train": 200, "calibration": 50, "heldout": 50},
                  tokenizer=str(tmp_path))
    assert b.num_classes == len(fast) and b.task == "causal_lm"
    first = stdlib_files()["train"][0].read_text(encoding="utf-8", errors="replace") + "\0"
    ids = fast(first, add_special_tokens=False)["input_ids"]
    assert b.train.x[0].tolist() == ids[:8] and b.train.y[0].tolist() == ids[1:9]  # stored in stream order
    with pytest.raises(ConfigError, match="no tokenizer could be loaded"):
        load_data("pystdlib", seq_len=8, tokens={"train": 50}, tokenizer=str(tmp_path / "none"))
    from prunelab.data.text import data_tokenizer  # what an export writes beside the model

    assert data_tokenizer(str(tmp_path))(first, add_special_tokens=False)["input_ids"] == ids
    assert data_tokenizer(None)(first, add_special_tokens=False)["input_ids"] == list(first.encode("utf-8"))
