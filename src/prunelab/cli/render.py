"""The command line's rich tables: a run's summary, a dry run's plan, attack and bench results.

Renderers take plain data (what the handlers computed) and a console; they compute nothing themselves.
"""
from __future__ import annotations


UNIT_NAMES = {"mlp": "MLP channels", "heads": "key-value groups (with their query heads)", "hidden": "hidden channels",
              "depth": "blocks"}

def console():
    """The console every command prints through. Off a terminal (a pipe, a file, CI) rich would assume 80
    columns and cut the numbers of wide tables with an ellipsis; there it gets 200."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_plan(plan: dict, con) -> None:
    """The per-layer decision of a dry run: units (output rows) kept and weight density."""
    from rich.table import Table

    t = Table(title=f"dry run: {plan['method']} -> sparsity {plan['sparsity']:.4f} over prunable weights "
                    f"({plan['compression_prunable']:.2f}x), before any retraining")
    for col in ("layer", "shape", "units kept", "density"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for row in plan["layers"]:
        units = row["shape"][0]
        kept = round(units * (1 - row["filter_sparsity"]))
        t.add_row(row["name"], "x".join(map(str, row["shape"])), f"{kept}/{units}", f"{1 - row['sparsity']:.4f}")
    con.print(t)


def print_attack(out: dict, con) -> None:
    """Accuracy under each attack and radius, one row per model."""
    from rich.table import Table

    t = Table(title=f"accuracy under attack ({out['samples'] or 'all'} test samples, PGD {out['steps']} steps)")
    cols = list(out["results"][0])
    for c in cols:
        t.add_column(c)
    for row in out["results"]:
        t.add_row(*[row[c] if isinstance(row[c], str) else f"{row[c]:.4f}" for c in cols])
    con.print(t)


def print_bench(out: dict, run_dir: str, repeats: int, con) -> None:
    """Bytes, FLOPs and latency of a run's artifacts, then the diagnoses where a speedup falls short."""
    from rich.table import Table

    t = Table(title=f"artifacts of {run_dir}: CPU, 1 thread, median of {repeats} runs after warm-up")
    for col in ("artifact", "bytes", "nonzero params", "FLOPs", "FLOP reduction", "b=1 ms", "speedup b=1",
                "b=64 ms", "speedup b=64"):
        t.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")  # never cut a number
    notes = []
    for r in out["rows"]:
        t.add_row(r["artifact"], f"{r['bytes']:,}", f"{r['params_nonzero']:,}", f"{r['flops']:,}",
                  f"{r['flop_reduction']:.2f}x", f"{r['latency_ms_b1']:.3f}", f"{r['speedup_b1']:.2f}x",
                  f"{r['latency_ms_b64']:.2f}", f"{r['speedup_b64']:.2f}x")
        for b in (1, 64):
            if r[f"diagnosis_b{b}"]:
                notes.append(f"{r['artifact']}, batch {b}: {r[f'diagnosis_b{b}']}")
    con.print(t)
    for n in dict.fromkeys(notes):
        con.print(f"- {n}")
    for layer, by_batch in (out.get("kernels") or {}).items():
        said = ", ".join(f"batch {b[1:]}: {c['kernel']} ({', '.join(f'{k} {v:.0f} us' for k, v in c['us'].items())})"
                         for b, c in by_batch.items())
        con.print(f"- {layer} ({by_batch['b1']['sparsity']:.0%} sparse) uses the fastest kernel measured: {said}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _seen(record: dict) -> str:
    """What a stage trained on: tokens (language models) or samples, and steps; epochs in older records."""
    if "tokens" in record or "samples" in record:
        what = "tokens" if "tokens" in record else "samples"
        return f"{record[what]:,} {what} ({record['steps']:,} steps)"
    return f"{record['epochs']} epochs" if "epochs" in record else "-"


def print_summary(s: dict, con, layers: bool = True) -> None:
    from rich.table import Table

    t = Table(title=f"{s['recipe']} (seed {s['seed']})", show_header=False)
    acc = "next-token accuracy" if s.get("task") == "causal_lm" else "accuracy"
    rows = [(f"dense {acc}", _fmt(s["dense_acc"]) if s["dense_acc"] is not None else "- (sparse from scratch)"),
            (f"pruned {acc}", _fmt(s.get("pruned_acc")))]
    if s.get("task") == "causal_lm":
        ev = s.get("eval") or {}
        where = f" ({ev.get('data')}, held-out, {ev.get('tokens', 0):,} tokens, windows of {ev.get('seq_len')})"
        rows += [("dense perplexity" + where, _fmt(s.get("dense_ppl"))), ("pruned perplexity", _fmt(s.get("pruned_ppl")))]
        at = ev.get("perplexity_at") or {}
        if at:  # the same stream at each context length, stride = length (evaluation.CONVENTION)
            rows.append((f"perplexity at {' / '.join(at)} tokens of context",
                         "; ".join(f"{name} " + " / ".join(_fmt(at[n].get(name)) for n in at)
                                   for name in ("dense", "pruned") if any(name in v for v in at.values()))))
    sh = s.get("shrunk")
    if "sparsity_prunable" in s:
        masks_only = " in the masks; the shrunk model also drops what removed channels fed (below)" if sh else ""
        rows += [("sparsity over prunable weights", f"{s['sparsity_prunable']:.4f}"),
                 ("compression over prunable weights",
                  f"{s['compression_prunable']:.2f}x ({s['prunable_params']:,} -> {s['nonzero_prunable']:,})"
                  + masks_only)]
    if "all_weights" in s:
        a, left = s["all_weights"], s.get("untargeted") or []
        rows.append(("sparsity over all weight matrices", f"{a['sparsity']:.4f} ({a['params']:,} -> {a['nonzero']:,})"))
        if left:
            names = ", ".join(r["name"] for r in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
            rows.append(("weight matrices not pruned", f"{len(left)} ({sum(r['numel'] for r in left):,} weights): {names}"))
    empty = s.get("nearly_empty") or []
    if empty:
        names = ", ".join(f"{r['name']} ({r['sparsity']:.3f})" for r in empty[:4]) + (
            f" and {len(empty) - 4} more" if len(empty) > 4 else "")
        rows.append(("layers pruned past 99 % (the model is cut there)", f"{len(empty)}: {names}"))
    ch = s.get("channels")
    if ch and "units" in ch:  # units of transformer blocks
        for kind, u in ch["units"].items():
            kept = sorted(set(u["kept"]))
            rows.append((f"{UNIT_NAMES.get(kind, kind)} removed ({ch['layout']} layout)",
                         f"{u['removed']:,} of {u['prunable']:,}; kept per group: {', '.join(map(str, kept))}"
                         + (f"; {u['untargeted']:,} not all targets" if u["untargeted"] else "")))
    elif ch:
        out_of_reach = ", ".join(f"{v:,} behind {k}" for k, v in ch["blocked"].items())
        rows.append(("channels removed", f"{ch['removed']:,} of {ch['prunable']:,} removable ({ch['sparsity']:.4f})"
                     + (f"; not removable: {out_of_reach}" if out_of_reach else "")))
        heads = ch.get("heads") or {}
        if heads.get("prunable"):
            rows.append(("attention heads removed", f"{heads['removed']:,} of {heads['prunable']:,}"))
    rows += [("compression over all parameters",
              f"{s['compression_model']:.2f}x ({s['params_total']:,} -> {s['params_nonzero']:,})"
              + (f"; pruning added {s['params_added']:,} parameters (the biases of bias compensation, counted "
                 "where nonzero)" if s.get("params_added") else "")),
             ("FLOPs (multiply-accumulates)",
              f"{s['flops_dense']:,} -> {s['flops_nonzero']:,} ({s['flops_dense'] / max(s['flops_nonzero'], 1):.2f}x fewer)"),
             ("wall time", f"{s['wall_seconds']:.1f} s")]
    if s.get("bytes_compact_file"):
        rows.append(("bytes on disk: dense -> compact",
                     f"{s['bytes_dense_file']:,} -> {s['bytes_compact_file']:,} "
                     f"({s['bytes_dense_file'] / s['bytes_compact_file']:.2f}x smaller; "
                     f"formats: {', '.join(sorted(set(s['compact_formats'].values())))})"))
    if sh:
        rows.append(("shrunk model (channels removed)",
                     f"{sh['params']:,} parameters ({s['params_total'] / max(sh['params'], 1):.2f}x fewer than "
                     f"unpruned), {sh['flops']:,} FLOPs ({s['flops_dense'] / max(sh['flops'], 1):.2f}x fewer), "
                     f"{sh['bytes_file']:,} bytes, accuracy {sh['test_acc']:.4f}"
                     + (f", perplexity {sh['test_ppl']:.2f}" if sh.get("test_ppl") is not None else "")
                     + (f"; config: {', '.join(f'{k} {v}' for k, v in sh['config'].items())}" if sh.get("config") else "")))
    for name, c in (s.get("controls") or {}).items():
        ppl = f", perplexity {c['test_ppl']:.2f}" if c.get("test_ppl") is not None else ""
        rows.append((f"control {name}", f"accuracy {c['test_acc']:.4f}{ppl} after {_seen(c)}"))
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)
    if layers and s.get("layers"):
        lt = Table(title="per-layer sparsity")
        for col in ("layer", "shape", "nonzero", "sparsity", "filter", "input ch.", "kernel"):
            lt.add_column(col, justify="right" if col != "layer" else "left", no_wrap=True)
        for row in s["layers"]:
            lt.add_row(row["name"], "x".join(map(str, row["shape"])), f"{row['nonzero']:,}/{row['numel']:,}",
                       _fmt(row["sparsity"]), _fmt(row["filter_sparsity"]), _fmt(row["input_channel_sparsity"]),
                       _fmt(row["kernel_sparsity"]))
        con.print(lt)
    if layers and s.get("stages"):
        st = Table(title="stages")
        for col in ("stage", "sparsity", "acc. before retrain", "test acc.", "trained on", "seconds"):
            st.add_column(col)
        for row in s["stages"]:
            st.add_row(row["stage"], _fmt(row["sparsity"]), _fmt(row["acc_before_retrain"]), _fmt(row["test_acc"]),
                       _seen(row), f"{row['seconds']:.1f}")
        con.print(st)
