"""Structured pruning of the small LLaMA of ``llama_pystdlib_dense``: held-out perplexity right after pruning,
parameters, multiply-accumulates and decode speed of the smaller model, against Torch-Pruning's LLM pruning.

    python benchmarks/structured_lm.py --runs-dir runs --threads 1 > benchmarks/results/structured_lm.md

For each kind of unit (MLP channels, key-value groups with their query heads, hidden size, depth, and a mix of
MLP + heads + hidden at one unit sparsity) and each target fraction of the model's parameters removed (every
parameter counted: embeddings, norms and the output layer too), the unit sparsity whose smaller config comes
closest is chosen (from the config alone, counted on the meta device); a kind that cannot come within 0.05 of
the target is marked unreachable. Each variant is pruned by ``transformer_units`` with three scores:
``activation`` (Minitron's mean |activation|, from ``--samples`` calibration windows), ``taylor`` (|w dL/dw| over
8 training batches), ``magnitude`` (L1) and ``flap`` (FLAP's fluctuation scored by the readers, with its bias
compensation: ``criterion: fluctuation, score_from: readers, compensate: bias``), then shrunk into a smaller ``LlamaForCausalLM`` (checked equal to
the masked model in float64) whose perplexity is measured on the held-out stream. Torch-Pruning: its
``MetaPruner`` as in its ``examples/LLMs/prune_llm.py`` (GroupNormImportance p=2, named GroupMagnitudeImportance in its 1.6 release, heads and kv heads by
``num_heads``, hidden size and heads at one ratio, head size kept, output layer ignored, ``round_to=4``), the
ratio searched so its parameter count matches ours; cache off and eager attention, without which its graph did
not finish (1.6.1 did not group its graph in 120 s here; 1.5.2, installed apart with ``pip install --target DIR
--no-deps torch-pruning==1.5.2`` and put first with ``PYTHONPATH=DIR``, does it in about a second). Decode: ``generate`` of ``--new-tokens`` greedy tokens after a 16-token prompt at batch 1 and 8,
the dense and the shrunk model interleaved, ``--repeats`` times, min and median tokens/s; the limit a
memory-bound decode can reach is the parameter ratio, printed beside the speedup, and a model of the same depth
at widths of 16 measures the per-token time that is not the weights' work (module calls, cache, sampling).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

VARIANTS = {"mlp": ["mlp"], "heads": ["heads"], "hidden": ["hidden"], "depth": ["depth"],
            "mix": ["mlp", "heads", "hidden"]}
SCORES = ("activation", "taylor", "magnitude", "flap")
# FLAP (An et al. 2024) as prunelab writes it: fluctuation scored by the readers, with its bias compensation
FLAP = {"criterion": "fluctuation", "score_from": "readers", "compensate": "bias"}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sparsity_for(model, kinds, target: float) -> float | None:
    """The unit sparsity whose smaller config removes closest to ``target`` of the parameters (None: > 0.05 off)."""
    from prunelab.engine.allocation import round_keep
    from prunelab.structure import family_of
    from prunelab.structure.families import attention_shape
    from prunelab.structure.hf_surgery import small_config
    from prunelab.structure import TransformerUnits

    fam = family_of(model)
    units = TransformerUnits(model, fam, dict(model.named_parameters()), kinds)
    total = n_params(model)
    heads, kv, _ = attention_shape(model, fam)
    full = {"mlp": model.config.intermediate_size, "heads": kv, "hidden": model.config.hidden_size,
            "depth": model.config.num_hidden_layers}
    best = None
    for i in range(0, 96):
        s = i / 100
        widths = {k: round_keep(1 - s, full[k]) for k in kinds}
        if any(w == 0 for w in widths.values()):
            break
        blocks = list(range(widths.pop("depth"))) if "depth" in kinds else list(range(full["depth"]))
        config = small_config(model, units, widths, blocks)
        with torch.device("meta"):
            removed = 1 - n_params(type(model)(config)) / total
        if best is None or abs(removed - target) < abs(best[1] - target):
            best = (s, removed)
    return best[0] if best and abs(best[1] - target) <= 0.05 else None


def prune_units(dense, ctx, kinds, score, sparsity, samples, seed):
    from prunelab import Pruner
    from prunelab.data.loader import TensorLoader
    from prunelab.export import shrink

    model = copy.deepcopy(dense)
    x = ctx.example_inputs()
    method = {"name": "transformer_units", "units": kinds, "criterion": score}
    if score == "flap":
        method.update(FLAP)
    if score == "activation":
        method["criterion"] = {"name": "activation", "samples": samples}
    t0 = time.perf_counter()
    p = Pruner(model, method, sparsity=sparsity, schedule="manual", example_inputs=x, seed=seed)
    if p.needs.calibration is not None:
        cal = ctx.data.calibration
        p.calibrate(TensorLoader(cal.x, cal.y, cal.batch_size, shuffle=True, seed=seed), samples=samples)
    tr = ctx.data.train
    for i, (xb, yb) in zip(range(p.needs.gradient_batches), TensorLoader(tr.x, tr.y, 8, shuffle=True, seed=seed)):
        model.zero_grad()
        model(xb, labels=xb).loss.backward()
        p.after_backward()
    p.prune(sparsity, final=True)
    small, changed = shrink(model, p.masks, x, graph=p.channels)
    return small.eval(), changed, time.perf_counter() - t0


def tp_version() -> str:
    from importlib.metadata import version

    import torch_pruning as tp

    return getattr(tp, "__version__", None) or version("torch-pruning")


def torch_pruning(dense, ctx, target_params: int, limit: float):
    """Torch-Pruning's LLM pruning (see the module docstring) at the ratio matching ``target_params``;
    TimeoutError when one attempt takes more than ``limit`` seconds."""
    import signal

    import torch_pruning as tp

    # the group L2 importance of its LLM example: GroupNormImportance in 1.5, GroupMagnitudeImportance in 1.6
    group_l2 = getattr(tp.importance, "GroupMagnitudeImportance", None) or tp.importance.GroupNormImportance

    def alarm(*_):
        raise TimeoutError
    signal.signal(signal.SIGALRM, alarm)

    def run(ratio):
        model = copy.deepcopy(dense).eval()
        model.config.use_cache = False
        model.config._attn_implementation = "eager"
        heads = {}
        for name, m in model.named_modules():
            if name.endswith("self_attn"):
                heads[m.q_proj] = model.config.num_attention_heads
                heads[m.k_proj] = heads[m.v_proj] = model.config.num_key_value_heads
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=ctx.example_inputs(), importance=group_l2(p=2),
            global_pruning=False, pruning_ratio=ratio, ignored_layers=[model.lm_head], num_heads=heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4)
        for g in pruner.step(interactive=True):
            g.prune()
        for name, m in model.named_modules():  # the attribute updates of its example
            if name.endswith("self_attn"):
                m.num_key_value_groups = m.q_proj.out_features // m.k_proj.out_features
        model.config.hidden_size = model.lm_head.in_features
        return model
    lo, hi, best = 0.0, 0.9, None
    for _ in range(12):
        mid = (lo + hi) / 2
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            m = run(mid)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if best is None or abs(n_params(m) - target_params) < abs(n_params(best[1]) - target_params):
            best = (mid, m)
        lo, hi = (mid, hi) if n_params(m) > target_params else (lo, mid)
    return best


def decode_rates(models: dict, vocab: int, batch: int, new: int, repeats: int) -> dict:
    """{name: (min, median) tokens/s} of greedy ``generate``, the models interleaved."""
    x = torch.randint(0, vocab, (batch, 16), generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in models}
    for m in models.values():
        m.config.use_cache = m.generation_config.use_cache = True
        m.generation_config.pad_token_id = 0
        m.generate(x, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
    for _ in range(repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                m.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            times[k].append(time.perf_counter() - t0)
    return {k: (batch * new / max(t), batch * new / statistics.median(t)) for k, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--scores", default=",".join(SCORES))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch-pruning", action="store_true")
    ap.add_argument("--tp-limit", type=float, default=120, help="seconds one Torch-Pruning attempt may take")
    ap.add_argument("overrides", nargs="*", help="recipe overrides (e.g. for a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers
    from prunelab.analysis import count_flops
    from prunelab.experiment import load_recipe, trained_dense

    transformers.logging.set_verbosity_error()
    recipe = load_recipe("llama_pystdlib_dense", a.overrides)
    ctx, dense = trained_dense(recipe, a.runs_dir)
    dense.eval()
    shape, dt = ctx.spec.input_shape, ctx.spec.input_dtype
    total, macs = n_params(dense), count_flops(dense, shape, dtype=dt)["dense"]
    base_ppl = ctx.evaluate(dense)["ppl"]
    print(f"# Structured pruning of a small LLaMA ({time.strftime('%Y-%m-%d')}, {a.threads} thread(s))\n")
    print(f"`python benchmarks/structured_lm.py --runs-dir {a.runs_dir} --threads {a.threads}`; dense model "
          f"`llama_pystdlib_dense` ({total:,} parameters, {macs:,} multiply-accumulates per {shape[0]}-token "
          f"window), held-out perplexity {base_ppl:.3f}; perplexity right after pruning, no recovery.\n")
    print("| removed (target) | units | unit sparsity | config | parameters kept | MACs kept | "
          + " | ".join(f"ppl {s}" for s in a.scores.split(",")) + f" | prune s ({a.scores.split(',')[0]}) |")
    print("|---|---|---|---|---|---|" + "---|" * len(a.scores.split(",")) + "---|")
    shrunk_for_decode = {}
    for ratio in map(float, a.ratios.split(",")):
        for v in a.variants.split(","):
            kinds = VARIANTS[v]
            s = sparsity_for(dense, kinds, ratio)
            if s is None:
                print(f"| {ratio:.0%} | {v} | unreachable | | | |" + " |" * len(a.scores.split(",")) + " |")
                continue
            ppl, secs, row = {}, None, None
            for score in a.scores.split(","):
                if score == "flap" and not {"mlp", "heads"} & set(kinds):
                    ppl[score] = None  # FLAP ranks and compensates MLP channels and heads only
                    continue
                small, changed, t = prune_units(dense, ctx, kinds, score, s, a.samples, 0)
                ppl[score] = ctx.evaluate(small)["ppl"]
                if score == a.scores.split(",")[0]:
                    secs = t
                    row = (changed, n_params(small) / total, count_flops(small, shape, dtype=dt)["dense"] / macs)
                    shrunk_for_decode[(ratio, v)] = small
            changed, kp, km = row
            cfg = ", ".join(f"{k}={val}" for k, val in changed.items() if k not in ("rms_norm_eps",))
            print(f"| {ratio:.0%} | {v} | {s:.2f} | {cfg} | {kp:.3f} | {km:.3f} | "
                  + " | ".join("-" if ppl[k] is None else f"{ppl[k]:.2f}" for k in a.scores.split(","))
                  + f" | {secs:.1f} |")
        if not a.no_torch_pruning:
            target = shrunk_for_decode.get((ratio, "mix")) or shrunk_for_decode.get((ratio, "hidden"))
            want = n_params(target) if target is not None else round(total * (1 - ratio))
            try:
                t_tp = time.perf_counter()
                r_tp, m_tp = torch_pruning(dense, ctx, want, a.tp_limit)
                ppl_tp = f"{ctx.evaluate(m_tp)['ppl']:.2f}"
                kp = n_params(m_tp) / total
                km = count_flops(m_tp, shape, dtype=dt)["dense"] / macs
                print(f"| {ratio:.0%} | Torch-Pruning {tp_version()} (hidden + heads, ratio {r_tp:.3f}) | | | {kp:.3f} | "
                      f"{km:.3f} | {ppl_tp} (its group L2) |" + " |" * (len(a.scores.split(",")) - 1) + " |")
            except TimeoutError:
                print(f"| {ratio:.0%} | Torch-Pruning {tp_version()} | did not finish grouping its dependency graph in "
                      f"{time.perf_counter() - t_tp:.0f} s (inside `group.has_pruning_op`; cache off, eager "
                      "attention) |")
            except Exception as exc:  # a reference that fails is reported, not hidden
                print(f"| {ratio:.0%} | Torch-Pruning | failed: {type(exc).__name__}: {str(exc)[:100]} |")
    print("\n## Decode speed (greedy `generate`, tokens/s, min / median of "
          f"{a.repeats}, dense and shrunk interleaved)\n")
    print("Speedup: dense time per token / this model's; above the floor: the same for the time above the floor "
          "model of each one's depth (what the weights' work takes), to compare with the parameter ratio.\n")
    print("| model | parameters kept | limit (1 / kept) | batch 1 tok/s | speedup | above the floor | batch 8 tok/s | "
          "speedup | above the floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    picks = {f"{v} at {r:.0%} (activation)": m for (r, v), m in shrunk_for_decode.items() if v in ("mix", "mlp", "depth")}
    # floors: each depth at widths of 16, where almost nothing of a token's time is the weights' work
    floors = {}
    for m in [dense, *picks.values()]:
        n = m.config.num_hidden_layers
        cfg = copy.deepcopy(dense.config)
        cfg.update({"hidden_size": 16, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
                    "head_dim": 8, "num_hidden_layers": n, "layer_types": None})
        floors[n] = type(dense)(cfg).eval()
    models = {"dense": dense, **picks, **{f"floor ({n} blocks, widths 16)": f for n, f in floors.items()}}
    rates = {b: decode_rates(models, dense.config.vocab_size, b, a.new_tokens, a.repeats) for b in (1, 8)}
    for k, m in models.items():
        kept = n_params(m) / total
        cells = []
        for b in (1, 8):
            lo, med = rates[b][k]
            t, t0 = 1 / med, 1 / rates[b]["dense"][1]
            tf, tf0 = (1 / rates[b][f"floor ({n} blocks, widths 16)"][1]
                       for n in (m.config.num_hidden_layers, dense.config.num_hidden_layers))
            above = f"{(t0 - tf0) / max(t - tf, 1e-12):.2f}x" if k in picks else "-"
            cells.append(f"{lo:.0f} / {med:.0f} | {t0 / t:.2f}x | {above}")
        print(f"| {k} | {kept:.3f} | {1 / kept:.2f}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
