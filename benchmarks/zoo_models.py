"""The models of ``foreign_models.py``: name -> (builder, example inputs as the model takes them, calibration
batch). Full torchvision and timm models at small image sizes, Hugging Face models built from small configs,
PyTorch's own transformer and recurrent layers. timm and transformers are optional: their rows are left out
when they are not installed."""
from __future__ import annotations

import torch
import torchvision
from torch import nn


def _gen():
    return torch.Generator().manual_seed(0)


def _img(s, n=2):
    return lambda: torch.randn(n, 3, s, s, generator=_gen())


def _tok(v, n=2, t=16):
    return lambda: torch.randint(0, v, (n, t), generator=_gen())


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
        self.enc, self.fc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


class Seq2Seq(nn.Module):
    """``nn.Transformer(src, tgt)``: two inputs, cross-attention."""

    def __init__(self):
        super().__init__()
        self.t = nn.Transformer(128, 4, 2, 2, 512, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(128, 100)

    def forward(self, src, tgt):
        return self.fc(self.t(src, tgt))


class RNNClassifier(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.emb, self.rnn = nn.Embedding(1000, 128), kind(128, 256, num_layers=2, batch_first=True)
        self.fc1, self.fc = nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.fc1(self.rnn(self.emb(x))[0][:, -1])))


class BiLSTMTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(1000, 128)
        self.rnn = nn.LSTM(128, 256, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(512, 17)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


def models() -> dict:
    from torchvision.models import VisionTransformer
    from torchvision.models import detection, optical_flow, segmentation

    seq = lambda: (torch.randn(2, 12, 128, generator=_gen()), torch.randn(2, 10, 128, generator=_gen()))  # noqa: E731
    detector_in = lambda: ([torch.rand(3, 160, 160, generator=_gen()), torch.rand(3, 128, 160, generator=_gen())],)  # noqa: E731
    out = {
        "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), _img(64)),
        "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), _img(64)),
        "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), _img(64)),
        "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=10), _img(64)),
        "regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(num_classes=10), _img(64)),
        "vit_b_16 (64 px)": (lambda: VisionTransformer(64, 16, 12, 12, 768, 3072, num_classes=10), _img(64)),
        "swin_t": (lambda: torchvision.models.swin_t(num_classes=10), _img(64)),
        "maxvit_t": (lambda: torchvision.models.maxvit_t(num_classes=10), _img(224, 1)),
        "fasterrcnn_mobilenet_v3_320": (lambda: detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=5), detector_in),
        "deeplabv3_mobilenet_v3": (lambda: segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=5, aux_loss=True), _img(128)),
        "raft_small (2 updates)": (lambda: optical_flow.raft_small(weights=None),
                                   lambda: (_img(128, 1)(), _img(128, 1)(), 2)),
        "TransformerEncoder": (Encoder, lambda: torch.randn(2, 16, 256, generator=_gen())),
        "nn.Transformer seq2seq": (Seq2Seq, seq),
        "LSTM classifier": (lambda: RNNClassifier(nn.LSTM), _tok(1000)),
        "GRU classifier": (lambda: RNNClassifier(nn.GRU), _tok(1000)),
        "BiLSTM tagger": (BiLSTMTagger, _tok(1000)),
    }
    try:
        import timm

        for name, kw, size in (("resnet18d", {}, 64), ("convnext_atto", {}, 64), ("deit_tiny_patch16_224", {"img_size": 64}, 64),
                               ("swin_tiny_patch4_window7_224", {"img_size": 112}, 112), ("levit_128s", {"img_size": 64}, 64),
                               ("mixer_s16_224", {"img_size": 64}, 64), ("fastvit_t8", {}, 64)):
            out[f"timm {name}"] = ((lambda n, k: lambda: timm.create_model(n, num_classes=10, **k))(name, kw), _img(size))
    except ImportError:
        pass
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        for kind in ("llama", "mistral", "qwen2", "gemma2", "phi3", "mixtral", "gpt2", "gpt_neox", "opt", "bert"):
            out[f"HF {kind} (config)"] = ((lambda k: lambda: _hf(transformers, k))(kind), _tok(1000))
    except ImportError:
        pass
    return out


def _hf(transformers, kind: str) -> nn.Module:
    """A 4-block model of hidden size 256 from its config, the cache on (transformers' default)."""
    common = dict(vocab_size=1000, num_hidden_layers=4)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=256, n_head=8, vocab_size=1000,
                                                                    n_positions=64, bos_token_id=0, eos_token_id=0))
    if kind == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            hidden_size=256, num_attention_heads=8, intermediate_size=1024, max_position_embeddings=64, **common))
    if kind == "opt":
        return transformers.OPTForCausalLM(transformers.OPTConfig(hidden_size=256, ffn_dim=1024, num_attention_heads=8,
                                                                  word_embed_proj_dim=256, max_position_embeddings=64,
                                                                  **common))
    if kind == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=256, intermediate_size=1024, num_attention_heads=8,
                                         max_position_embeddings=64, **common)
        return transformers.GPTNeoXForCausalLM(cfg)
    kw = {"num_local_experts": 4, "num_experts_per_tok": 2} if kind == "mixtral" else {}
    if kind in ("phi3", "gemma2"):
        kw.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, head_dim=32)
    cfg = transformers.AutoConfig.for_model(kind, hidden_size=256, intermediate_size=768, num_attention_heads=8,
                                            num_key_value_heads=2, **common, **kw)
    return transformers.AutoModelForCausalLM.from_config(cfg)
