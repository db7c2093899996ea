"""summary.json: what a finished run reports, each figure saying over which parameters it is counted."""
from __future__ import annotations

from ..analysis import count_flops, count_params
from ..export import compact_bytes
from ..data.text import describe as describe_text
from ..io import atomic_write_json, atomic_write_text
from .records import seal
from ..structure import structure_for
from ..targets import accounting
from . import paths
from .checkpoint import load_checkpoint
from .context import RunContext
from .evaluation import CONVENTION, default_lengths, perplexity_at
from .records import StateRecord, SummaryRecord, read_record, validated
from .stages import Stage


NEARLY_EMPTY = 0.99  # a tensor pruned past this is named by the summary


def summarize(ctx: RunContext, stages: list[Stage]) -> dict:
    """Write the run's concatenated metrics.jsonl and summary.json (last); returns the summary."""
    r = ctx.recipe
    pruning = [s.name for s in stages if s.pruning]
    states = {n: read_record(StateRecord, ctx.paths.stage(n) / paths.STATE) for n in pruning}
    extra = {s.name: read_record(StateRecord, ctx.paths.stage(s.name) / paths.STATE) for s in stages if not s.pruning}
    final = pruning[-1]
    model = ctx.build_model()
    masks, _ = load_checkpoint(ctx.paths.stage(final), model, restore_rng=False)
    shape = ctx.data.input_shape
    params = count_params(model)
    dt = ctx.data.input_dtype
    flops = count_flops(model, shape, r.device, dt)
    dense_model = ctx.build_model(checkpoint=ctx.paths.stage(paths.DENSE))
    dense_flops = count_flops(dense_model, shape, r.device, dt)
    dense_known = ctx.dense_trained
    dense_total = count_params(dense_model)["total"]
    summary = {
        "recipe": r.name, "run_dir": str(ctx.paths.root), "seed": r.seed,
        "method": r.prune.method if r.prune else None,
        "dense_acc": states[paths.DENSE]["test_acc"] if dense_known else None,
        "pruned_acc": states[final]["test_acc"] if r.prune else None,
        "task": ctx.data.task,
        # over the unpruned model's parameters: bias compensation gives the pruned one biases it did not have
        "params_total": dense_total, "params_nonzero": params["nonzero"],
        "compression_model": dense_total / max(params["nonzero"], 1),
        "flops_dense": dense_flops["dense"], "flops_nonzero": flops["nonzero"],
        "wall_seconds": sum(s.get("seconds", 0.0) for s in states.values()),
        "stages": [{"stage": n, "test_acc": s["test_acc"], "sparsity": s.get("sparsity", 0.0),
                    "acc_before_retrain": s.get("acc_before_retrain"), "seconds": s["seconds"],
                    **{k: s[k] for k in ("steps", "tokens", "samples", "test_ppl") if k in s}}
                   for n, s in states.items()],
    }
    if params["total"] != dense_total:  # said, not hidden in the ratio (FLAP's bias compensation)
        summary["params_added"] = params["total"] - dense_total
    if ctx.data.task == "causal_lm":  # accuracy is next-token accuracy; perplexity on the held-out stream
        summary["dense_ppl"] = states[paths.DENSE].get("test_ppl") if dense_known else None
        summary["pruned_ppl"] = states[final].get("test_ppl") if r.prune else None
        models = {"dense": dense_model} if dense_known else {}
        models.update({"pruned": model} if r.prune else {})
        summary["eval"] = {"data": describe_text(ctx.data.name), "seq_len": r.data.seq_len, "stride": r.data.seq_len,
                           "tokens": sum(y.numel() for _, y in ctx.data.test), "convention": CONVENTION,
                           "perplexity_at": perplexity_at(models, ctx.data.test, default_lengths(r.data.seq_len),
                                                          r.device)}
    summary["bytes_dense_file"] = (ctx.paths.stage(final) / paths.MODEL).stat().st_size
    if masks is not None:
        compact, formats = compact_bytes(model, masks)
        summary.update(bytes_compact_file=compact, compact_formats=formats)
        summary.update(prunable_params=masks.numel(), nonzero_prunable=masks.nonzero(),
                       sparsity_prunable=masks.sparsity(), compression_prunable=masks.compression_ratio(),
                       layers=masks.layer_stats(), **accounting(model, masks))
        # a layer (nearly) emptied cuts the model there: named, not left to be found as a 1.000 in the table
        summary["nearly_empty"] = [{"name": row["name"], "sparsity": row["sparsity"]} for row in summary["layers"]
                                   if row["sparsity"] >= NEARLY_EMPTY]
    if masks is not None and ctx.method is not None and ctx.method.channels:
        structure = structure_for(model, masks, ctx.method, ctx.example_inputs())
        summary["channels"] = structure.report(masks, masks)
    if paths.SHRUNK in extra:
        sh = extra[paths.SHRUNK]
        summary["shrunk"] = {"params": sh["params"], "flops": sh["flops"], "bytes_file": sh["bytes"],
                             "test_acc": sh["test_acc"], "changed_modules": sh["changed_modules"],
                             **{k: sh[k] for k in ("test_ppl", "config") if k in sh}}
    summary["controls"] = {kind: {k: v for k, v in s.items() if k not in ("rng", "optimizer", "files")}
                           for n, s in extra.items() if (kind := paths.control_kind(n)) is not None}
    lines = []
    for s in stages:
        p = ctx.paths.stage_metrics(s.name)
        if p.exists():
            lines += p.read_text(encoding="utf-8").splitlines()
    atomic_write_text(ctx.paths.metrics, "".join(line + "\n" for line in lines))
    atomic_write_json(ctx.paths.summary, validated(SummaryRecord, summary, ctx.paths.summary))
    seal(ctx.paths)
    return summary

