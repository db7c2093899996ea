"""The model-zoo contract: prunelab on models its authors did not write (torchvision CNNs and ViT, PyTorch's
transformer encoder, LSTM and GRU classifiers, a tied-embedding language model, Hugging Face GPT-2 and BERT),
at tiny widths so the suite stays fast. Every weight matrix is accounted for, masks hold through training,
N:M applies wherever it can, files round-trip, and channel pruning shrinks exactly."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.regnet import BlockParams, RegNet

from prunelab import Pruner
from prunelab.export import load_compact, save_compact, shrink
from prunelab.export.sparse_linear import sparsify_linear
from prunelab.inputs import call, max_output_diff, tensors, to_double


class RNNClassifier(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.rnn = kind(16, 24, num_layers=2, batch_first=True)
        self.fc1, self.fc = nn.Linear(24, 32), nn.Linear(32, 5)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.fc(torch.relu(self.fc1(h[:, -1])))


class TiedLM(nn.Module):
    """Token embedding shared with the output layer, as language models do."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.out = nn.Linear(16, 40, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.down(torch.relu(self.up(self.emb(x)))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc, self.fc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


def _img(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _tokens(vocab):
    return lambda n=2: torch.randint(0, vocab, (n, 7), generator=torch.Generator().manual_seed(1))


def _effnet():
    settings, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(settings, 0.0, last_channel=last, num_classes=10)


MODELS = {  # name: (builder, example inputs, expected channel-prunable)
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), _img, True),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25), _img, True),
    "efficientnet_b0": (_effnet, _img, True),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10), _img, True),
    "regnet": (lambda: RegNet(BlockParams.from_init_params(2, 16, 8.0, 2.0, 8), num_classes=10), _img, True),
    "vit": (lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10), _img, True),
    "encoder": (Encoder, lambda n=2: torch.randn(n, 5, 32, generator=torch.Generator().manual_seed(1)), True),
    "lstm": (lambda: RNNClassifier(nn.LSTM), _tokens(50), True),
    "gru": (lambda: RNNClassifier(nn.GRU), _tokens(50), True),
    "tied_lm": (TiedLM, _tokens(40), True),
}


def _hf(kind):
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16,
                                      bos_token_id=0, eos_token_id=0, use_cache=False)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=16)
    return transformers.BertForSequenceClassification(cfg)


for _kind in ("gpt2", "bert"):
    MODELS[f"hf_{_kind}"] = ((lambda k: lambda: _hf(k))(_kind), _tokens(100), True)


def _build(name):
    make, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    return make().eval(), inputs()


@pytest.mark.parametrize("name", MODELS)
def test_global_magnitude_reaches_its_target_and_accounts_for_every_weight_matrix(name):
    model, _ = _build(name)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.8)
    s = p.summary()
    assert abs(s["sparsity"] - 0.8) <= 0.5 / s["prunable_params"]  # the one rounding of the global budget
    matrices = {n: w for n, w in model.named_parameters() if sum(d > 1 for d in w.shape) >= 2}
    zeros = sum(int((w == 0).sum()) for w in matrices.values())
    total = sum(w.numel() for w in matrices.values())
    assert s["all_weights"]["params"] == total and s["all_weights"]["sparsity"] == pytest.approx(zeros / total)
    untargeted = {r["name"] for r in s["untargeted"]}
    assert untargeted == set(matrices) - set(p.params)
    # what stays untouched by default is embeddings and free parameters (class token, position embeddings)
    assert all("emb" in n or "wte" in n or "wpe" in n for n in untargeted), untargeted


@pytest.mark.parametrize("name", MODELS)
def test_zeros_survive_sgd_and_adamw_steps(name):
    model, x = _build(name)
    model.train()
    p = Pruner(model, "magnitude", sparsity=0.5)
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
                torch.optim.AdamW(model.parameters(), lr=0.01)):
        for _ in range(2):
            opt.zero_grad()
            sum(t.float().square().mean() for t in tensors(call(model, x))).backward()
            p.after_backward()
            opt.step()
            p.step(opt)
    assert all((w[~p.masks[n]] == 0).all() for n, w in p.params.items())


@pytest.mark.parametrize("name", MODELS)
def test_two_four_applies_to_every_compatible_weight_and_names_the_rest(name):
    model, _ = _build(name)
    p = Pruner(model, {"name": "magnitude", "granularity": "nm"})
    for n, m in p.masks.items():
        canon = p.layouts[n].canonical(m)
        runs = canon.movedim(1, -1).reshape(*canon.movedim(1, -1).shape[:-1], -1, 4)
        assert (runs.sum(-1) == 2).all(), n
    for n, why in p.skipped.items():
        w = dict(model.named_parameters())[n]
        assert p.layouts.get(n) is None and "divisible by 4" in why, (n, tuple(w.shape))
    assert set(p.params) | set(p.skipped) == {t for t in Pruner(model, "magnitude", sparsity=0.5).params}


@pytest.mark.parametrize("name", MODELS)
def test_compact_file_round_trips_exactly_and_is_smaller(name, tmp_path):
    model, _ = _build(name)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.9)
    size = save_compact(model, p.masks, tmp_path / "m.sparse")
    state, masks = load_compact(tmp_path / "m.sparse")
    own = model.state_dict()
    assert set(state) == set(own) and all(torch.equal(state[k], own[k]) for k in own)
    assert masks.equal(p.masks)
    dense = sum(t.numel() * t.element_size() for t in {id(t): t for t in own.values()}.values())
    assert size < dense


@pytest.mark.parametrize("name", [n for n, (_, _, channels) in MODELS.items() if channels])
def test_channel_pruning_shrinks_to_the_same_outputs(name):
    model, x = _build(name)
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)
    report = p.summary()["channels"]
    if "units" in report:  # a transformer of a known layout: units read from its blocks (prunelab.structure)
        assert all(u["removed"] == u["prunable"] // 2 for u in report["units"].values())
    else:
        assert report["prunable"] > 0 and report["removed"] >= 0.4 * report["prunable"]
        assert report["heads"]["removed"] == report["heads"]["prunable"] // 2  # torch attention: half its heads
        assert all(r["removed"] == r["units"] // 2 for r in report.get("recurrent", {}).values())
        assert ("recurrent" in report) == (name in ("lstm", "gru"))
    small, widths = shrink(model, p.masks, x)
    assert widths and sum(q.numel() for q in small.parameters()) < sum(q.numel() for q in model.parameters())
    masked = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)  # the masked model itself
    masked.set_masks(p.masks)
    assert max_output_diff(model.double(), small.double(), to_double(x)) <= 1e-5


def test_resnet18_channel_pruning_removes_what_torch_pruning_removes():
    """Coupled channels are chosen per group: at 0.5 of the filters, half of every group goes."""
    model, x = _build("resnet18")
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x[:1])
    small, _ = shrink(model, p.masks, x[:1])
    kept = sum(q.numel() for q in small.parameters()) / sum(q.numel() for q in model.parameters())
    assert kept < 0.27  # Torch-Pruning's MagnitudePruner at 0.5 keeps 0.251 of resnet18's parameters


def test_attention_out_proj_stays_a_module_when_linear_layers_go_sparse():
    model, x = _build("encoder")
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.9)
    sparse, replaced = sparsify_linear(model, p.masks)
    assert replaced and not any("out_proj" in r for r in replaced)
    assert max_output_diff(model, sparse, x) <= 1e-5


def test_tied_weight_is_one_target_found_through_both_names():
    model, x = _build("tied_lm")
    p = Pruner(model, "magnitude", sparsity=0.5, targets={"embeddings": True})
    assert "emb.weight" in p.params and "out.weight" not in p.params  # named as named_parameters() names it
    assert p.masks.numel() == sum(w.numel() for w in model.parameters() if w.dim() >= 2)
    from prunelab import Masks
    alias = Masks({"out.weight": p.masks["emb.weight"]})
    fresh = TiedLM()
    alias.apply(fresh)  # the mask keyed by the second name reaches the shared tensor
    assert (fresh.emb.weight[~p.masks["emb.weight"]] == 0).all()


@pytest.mark.parametrize("name", ["mobilenet_v2", "lstm", "hf_bert"])
def test_onnx_export_with_the_models_own_inputs(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from prunelab.export import export_onnx

    model, x = _build(name)
    Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.8)
    assert export_onnx(model, x, tmp_path / "m.onnx") <= 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0


def test_bert_loses_mlp_channels_and_stays_a_bert_that_transformers_loads(tmp_path):
    """BERT's config derives the head size from hidden_size / heads, so it cannot hold fewer heads of the same
    size: its heads stay, its MLP channels go, and the result is a BertForMaskedLM with a smaller config."""
    transformers = pytest.importorskip("transformers")
    model, x = _build("hf_bert")
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)
    assert all(bool(p.masks[f"bert.encoder.layer.{i}.attention.self.{w}.weight"].all())
               for i in range(2) for w in ("query", "key", "value"))
    small, changed = shrink(model, p.masks, x)
    assert type(small) is type(model) and changed == {"intermediate_size": model.config.intermediate_size // 2}
    assert max_output_diff(model.double(), small.double(), x) <= 1e-5
    small.save_pretrained(tmp_path / "bert")
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert", local_files_only=True)
    assert back.config.intermediate_size == model.config.intermediate_size // 2


def test_bad_input_is_one_clear_sentence():
    from prunelab import ConfigError

    with pytest.raises(ConfigError, match="no prunable weights matched"):
        Pruner(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), "magnitude", sparsity=0.5)
    with pytest.raises(ConfigError, match="fits none of the 1 target weights.*divisible by 4"):
        Pruner(nn.Sequential(nn.Linear(3, 5)), {"name": "magnitude", "granularity": "nm"})
    with pytest.raises(ConfigError, match="incompatible must be 'skip' or 'error'"):
        Pruner(nn.Sequential(nn.Linear(4, 5)), "magnitude", sparsity=0.5, targets={"incompatible": "ignore"})
    with pytest.raises(ConfigError, match="could not trace the model's channel dependencies"):
        Pruner(_build("lstm")[0], "l1_filter", sparsity=0.5, example_inputs=torch.randn(2, 7))  # floats, not ids
