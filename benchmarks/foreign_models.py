"""prunelab on models it was not written for, against Torch-Pruning at the same ratio.

Per model: parameters after channel pruning at ``--ratio`` of the filters (``l1_filter``) and shrink, for prunelab
and for Torch-Pruning's ``MagnitudePruner`` (L1, the classifier ignored), both from the same initial weights;
the channels prunelab removed of those it can remove exactly, and those out of reach with the reason; the
time of prune + shrink for both (interleaved, min and median of ``--repeats``); global magnitude at 0.8 over
prunable weights and what that is over every weight matrix; and which weights 2:4 skips and why.

    python benchmarks/foreign_models.py --threads 1 --repeats 3 > benchmarks/results/foreign_models.md
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from torch import nn


def _models() -> dict:
    """name: (builder, example inputs). Full torchvision models at small image sizes; small language models."""
    from torchvision.models import VisionTransformer

    img = lambda s: (lambda: torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0)))  # noqa: E731
    tok = lambda v: (lambda: torch.randint(0, v, (1, 16), generator=torch.Generator().manual_seed(0)))  # noqa: E731

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
            self.enc, self.fc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False), nn.Linear(256, 10)

        def forward(self, x):
            return self.fc(self.enc(x).mean(1))

    class RNNClassifier(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.emb, self.rnn = nn.Embedding(1000, 128), kind(128, 256, num_layers=2, batch_first=True)
            self.fc1, self.fc = nn.Linear(256, 256), nn.Linear(256, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.fc1(self.rnn(self.emb(x))[0][:, -1])))

    out = {
        "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), img(64)),
        "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), img(64)),
        "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), img(64)),
        "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=10), img(64)),
        "regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(num_classes=10), img(64)),
        "vit_b_16 (64 px)": (lambda: VisionTransformer(64, 16, 12, 12, 768, 3072, num_classes=10), img(64)),
        "TransformerEncoder": (Encoder, lambda: torch.randn(1, 16, 256, generator=torch.Generator().manual_seed(0))),
        "LSTM classifier": (lambda: RNNClassifier(nn.LSTM), tok(1000)),
        "GRU classifier": (lambda: RNNClassifier(nn.GRU), tok(1000)),
    }
    try:
        import transformers

        gpt2 = transformers.GPT2Config(n_layer=4, n_embd=256, n_head=8, vocab_size=1000, n_positions=64,
                                       bos_token_id=0, eos_token_id=0, use_cache=False)
        bert = transformers.BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                                       intermediate_size=1024, vocab_size=1000, max_position_embeddings=64)
        out["HF GPT-2 (config)"] = (lambda: transformers.GPT2LMHeadModel(gpt2), tok(1000))
        out["HF BERT (config)"] = (lambda: transformers.BertForSequenceClassification(bert), tok(1000))
    except ImportError:
        pass
    return out


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _prunelab(make, x, ratio):
    from prunelab import Pruner
    from prunelab.export import shrink

    torch.manual_seed(0)
    model = make().eval()
    t0 = time.perf_counter()
    p = Pruner(model, "l1_filter", sparsity=ratio, example_inputs=x)
    small, _ = shrink(model, p.masks, x)
    return _params(small), time.perf_counter() - t0, p.summary()["channels"]


def _torch_pruning(make, x, ratio):
    import torch_pruning as tp

    torch.manual_seed(0)
    model = make().eval()
    t0 = time.perf_counter()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                              ignored_layers=last).step()
    return _params(model), time.perf_counter() - t0


def _try(fn, *args):
    try:
        return fn(*args), ""
    except Exception as exc:  # a benchmark row, not a crash: say what failed
        first = (str(exc).splitlines() or [""])[0][:80]
        return None, f"{type(exc).__name__}{': ' + first if first else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", help="comma-separated subset")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    from prunelab import Pruner

    models = _models()
    chosen = a.models.split(",") if a.models else list(models)
    print(f"# prunelab on foreign models\n\n{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
          f"{a.threads} thread(s), channel ratio {a.ratio}, times: min / median of {a.repeats} (prunelab and "
          "Torch-Pruning interleaved; prunelab's includes the float64 equality check of the shrunk model)\n")
    print("| model | params | kept, prunelab | kept, Torch-Pruning | channels removed / removable (exactly) | "
          "heads removed | channels out of reach | prune+shrink s, prunelab | prune s, Torch-Pruning |")
    print("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name in chosen:
        make, inputs = models[name]
        x = inputs()
        n0 = _params(make())
        ours, theirs = [], []
        for _ in range(a.repeats):
            r, err = _try(_prunelab, make, x, a.ratio)
            ours.append((r, err))
            r2, err2 = _try(_torch_pruning, make, x, a.ratio)
            theirs.append((r2, err2))
        (o, oerr), (t, terr) = ours[0], theirs[0]
        o_cell = f"{o[0] / n0:.3f}" if o else f"failed ({oerr})"
        t_cell = f"{t[0] / n0:.3f}" if t else f"failed ({terr})"
        ch = o[2] if o else {}
        reach = ", ".join(f"{k} {v:,}" for k, v in (ch.get("blocked") or {}).items()) or "-"
        o_t = [r[1] for r, _ in ours if r]
        t_t = [r[1] for r, _ in theirs if r]
        fmt = lambda ts: f"{min(ts):.2f} / {statistics.median(ts):.2f}" if ts else "-"  # noqa: E731
        if "units" in ch:  # a transformer of a known layout: units read from its blocks, by kind
            removed = "; ".join(f"{k} {u['removed']:,} / {u['prunable']:,}" for k, u in ch["units"].items())
        else:
            removed = f"{ch['removed']:,} / {ch['prunable']:,}" if ch else "-"
        heads = ch.get("heads") or {}
        heads = f"{heads['removed']} / {heads['prunable']}" if heads.get("prunable") else "-"
        print(f"| {name} | {n0:,} | {o_cell} | {t_cell} | {removed} | {heads} | {reach} | {fmt(o_t)} | {fmt(t_t)} |")
        torch.manual_seed(0)
        model = make().eval()
        s = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.8).summary()
        nm = Pruner(make().eval(), {"name": "magnitude", "granularity": "nm"})
        left = ", ".join(r["name"] for r in s["untargeted"]) or "none"
        notes.append(f"- {name}: global magnitude 0.8 over {s['prunable_params']:,} prunable weights is "
                     f"{s['all_weights']['sparsity']:.3f} over all {s['all_weights']['params']:,} weight-matrix "
                     f"entries (not targeted: {left}); 2:4 applies to {len(nm.params)} weights, skips "
                     f"{len(nm.skipped)}" + (f" ({', '.join(list(nm.skipped)[:3])}"
                                             f"{' ...' if len(nm.skipped) > 3 else ''}: input channels not "
                                             "divisible by 4)" if nm.skipped else ""))
    print("\nUnstructured accounting and N:M:\n")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
