"""The ``prunelab`` command line: run recipes, list them, show a run's summary, compare runs.

Every user mistake ends with one sentence on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .errors import PrunelabError


def _console():
    from rich.console import Console

    return Console(highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .experiment import Runner, load_recipe, run_dir_for

    recipe_arg, overrides = args.recipe, list(args.overrides)
    if recipe_arg is not None and "=" in recipe_arg:  # `prunelab run train.epochs=2` runs the quickstart
        overrides.insert(0, recipe_arg)
        recipe_arg = None
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    recipe = load_recipe(recipe_arg, overrides)
    from .experiment.distributed import init_from_env

    info = init_from_env(recipe.device)  # torchrun: one process per rank, rank 0 writes and prints
    runs_root = args.runs_dir or os.environ.get("PRUNELAB_RUNS") or "runs"
    run_dir = run_dir_for(recipe, runs_root)
    con = _console()
    if info.main:
        where = f" ({info.world} processes)" if info.world > 1 else ""
        con.print(f"[bold]{recipe.name}[/]: {recipe.description or ''}\nrun folder: {run_dir}{where}")
    runner = Runner(recipe, run_dir, progress=not args.no_progress and sys.stderr.isatty(),
                    log=lambda s: con.print(s), stop_after=args.stop_after)
    try:
        if args.dry_run:
            if info.world > 1:
                raise ConfigError("--dry-run runs in one process; start it without torchrun")
            print_plan(runner.dry_run(), con)
            return 0
        summary = runner.run()
        if summary and info.main:
            print_summary(summary, con, layers=False)
    finally:
        if info.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


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


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from .experiment import builtin_recipes

    for name, path in sorted(builtin_recipes().items()):
        desc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        print(f"{name:34s} {desc}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .experiment import load_summary

    print_summary(load_summary(args.run_dir), _console(), layers=True)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .attack import attack_run
    from .errors import ConfigError

    try:
        eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        raise ConfigError(f"--eps must be comma-separated numbers, got {args.eps!r}") from None
    out = attack_run(args.run_dir, eps, args.attacks.split(","), args.samples or None, args.steps, args.step_size,
                     args.dense_run)
    t = Table(title=f"accuracy under attack ({out['samples'] or 'all'} test samples, PGD {out['steps']} steps)")
    cols = list(out["results"][0])
    for c in cols:
        t.add_column(c)
    for row in out["results"]:
        t.add_row(*[row[c] if isinstance(row[c], str) else f"{row[c]:.4f}" for c in cols])
    _console().print(t)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiment.compare import compare_runs, table_lines, write_table

    rows = compare_runs(args.run_dirs)
    lines, _ = table_lines(rows)
    print("Top-1 accuracy %, mean +- std over seeds.\n")
    print("\n".join(lines))
    if args.out:
        from .experiment.mask_report import mask_report

        for path in write_table(rows, args.out):
            print(f"wrote {path}")
        sim = mask_report(args.run_dirs, args.out)
        if sim:
            print("\nJaccard similarity of final masks (mean over pairs of runs), against random masks:\n")
            print("\n".join(sim))
            print(f"\nwrote jaccard, similarity, accuracy, structure and stability tables and figures to {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiment.sweep import commands, plan, run_sweep, table

    runs_root, fixed = _runs_root_and_fixed(args)
    points = plan(args.recipe, list(args.grid or []), args.seeds, runs_root, fixed)
    if args.print_commands:
        print("\n".join(commands(args.recipe, points, runs_root)))
        return 0
    rows = run_sweep(args.recipe, points, runs_root, args.jobs, threads=args.threads)
    print("\n".join(table(rows)))
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


def cmd_curve(args: argparse.Namespace) -> int:
    from .experiment.curve import curve_points, parse_baselines, parse_compressions, run_curve, write_curve

    runs_root, fixed = _runs_root_and_fixed(args)
    points = curve_points(args.recipe, parse_compressions(args.compressions), parse_baselines(args.baseline),
                          args.seeds, runs_root, fixed)
    rows = run_curve(args.recipe, points, runs_root, args.jobs, threads=args.threads)
    out = args.out or str(Path(runs_root) / f"curve_{args.recipe}")
    command = "prunelab " + " ".join(shlex.quote(a) for a in args.argv)
    print("\n".join(write_curve(rows, out, f"{args.recipe}: accuracy against compression", command)))
    print(f"\nwrote {out}.md, {out}.csv and {out}.png")
    return 0 if len(rows) == len(points) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from .export.artifacts import export_run

    path = export_run(args.run_dir, args.format, args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .export.artifacts import bench_run

    out = bench_run(args.run_dir, args.repeats)
    t = Table(title=f"artifacts of {args.run_dir}: CPU, 1 thread, median of {args.repeats} runs after warm-up")
    for col in ("artifact", "bytes", "nonzero params", "FLOPs", "FLOP reduction", "b=1 ms", "speedup b=1",
                "b=64 ms", "speedup b=64"):
        t.add_column(col, justify="left" if col == "artifact" else "right")
    notes = []
    for r in out["rows"]:
        t.add_row(r["artifact"], f"{r['bytes']:,}", f"{r['params_nonzero']:,}", f"{r['flops']:,}",
                  f"{r['flop_reduction']:.2f}x", f"{r['latency_ms_b1']:.3f}", f"{r['speedup_b1']:.2f}x",
                  f"{r['latency_ms_b64']:.2f}", f"{r['speedup_b64']:.2f}x")
        for b in (1, 64):
            if r[f"diagnosis_b{b}"]:
                notes.append(f"{r['artifact']}, batch {b}: {r[f'diagnosis_b{b}']}")
    con = _console()
    con.print(t)
    for n in dict.fromkeys(notes):
        con.print(f"- {n}")
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_summary(s: dict, con, layers: bool = True) -> None:
    from rich.table import Table

    t = Table(title=f"{s['recipe']} (seed {s['seed']})", show_header=False)
    rows = [("dense accuracy", _fmt(s["dense_acc"]) if s["dense_acc"] is not None else "- (sparse from scratch)"), ("pruned accuracy", _fmt(s.get("pruned_acc")))]
    if "sparsity_prunable" in s:
        rows += [("sparsity over prunable weights", f"{s['sparsity_prunable']:.4f}"),
                 ("compression over prunable weights",
                  f"{s['compression_prunable']:.2f}x ({s['prunable_params']:,} -> {s['nonzero_prunable']:,})")]
    rows += [("compression over all parameters",
              f"{s['compression_model']:.2f}x ({s['params_total']:,} -> {s['params_nonzero']:,})"),
             ("FLOPs (multiply-accumulates)",
              f"{s['flops_dense']:,} -> {s['flops_nonzero']:,} ({s['flops_dense'] / max(s['flops_nonzero'], 1):.2f}x fewer)"),
             ("wall time", f"{s['wall_seconds']:.1f} s")]
    if s.get("bytes_compact_file"):
        rows.append(("bytes on disk: dense -> compact",
                     f"{s['bytes_dense_file']:,} -> {s['bytes_compact_file']:,} "
                     f"({s['bytes_dense_file'] / s['bytes_compact_file']:.2f}x smaller; "
                     f"formats: {', '.join(sorted(set(s['compact_formats'].values())))})"))
    sh = s.get("shrunk")
    if sh:
        rows.append(("shrunk model (channels removed)",
                     f"{sh['params']:,} parameters, {sh['flops']:,} FLOPs, {sh['bytes_file']:,} bytes, "
                     f"accuracy {sh['test_acc']:.4f}"))
    for name, c in (s.get("controls") or {}).items():
        rows.append((f"control {name}", f"accuracy {c['test_acc']:.4f} after {c['epochs']} epochs"))
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
        for col in ("stage", "sparsity", "acc. before retrain", "test acc.", "seconds"):
            st.add_column(col)
        for row in s["stages"]:
            st.add_row(row["stage"], _fmt(row["sparsity"]), _fmt(row["acc_before_retrain"]), _fmt(row["test_acc"]),
                       f"{row['seconds']:.1f}")
        con.print(st)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        sys.stderr.write(f"prunelab: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prunelab", description="Neural-network pruning: run recipes, inspect runs.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run (or resume) a recipe; with no recipe, the quickstart")
    r.add_argument("recipe", nargs="?", help="a built-in recipe name or a YAML file")
    r.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=3")
    r.add_argument("--runs-dir", help="where run folders go (default $PRUNELAB_RUNS or ./runs)")
    r.add_argument("--data-root", help="data root (default $PRUNELAB_DATA or ./data)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true",
                   help="train (or reuse) the dense model, print the per-layer pruning decision, retrain nothing")
    r.add_argument("--stop-after", metavar="STAGE", help="stop after this stage (resume later by rerunning)")
    r.set_defaults(fn=cmd_run)
    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(fn=cmd_recipes)
    s = sub.add_parser("show", help="print a run's summary as tables")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_show)
    a = sub.add_parser("attack", help="accuracy of a run's dense and sparse models under FGSM and PGD")
    a.add_argument("run_dir")
    a.add_argument("--eps", default="0.05,0.1,0.2,0.3", help="L-inf radii in pixel space [0, 1]")
    a.add_argument("--attacks", default="fgsm,pgd")
    a.add_argument("--steps", type=int, default=10, help="PGD steps")
    a.add_argument("--step-size", type=float, default=None, help="PGD step (default eps/4)")
    a.add_argument("--samples", type=int, default=1000, help="test samples to attack (0 = all)")
    a.add_argument("--dense-run", help="a run whose final model is the dense reference (for sparse-from-scratch runs)")
    a.set_defaults(fn=cmd_attack)
    c = sub.add_parser("compare", help="table of finished runs (unpruned, fine-tuned, controls, over seeds) and "
                                       "the similarity, structure and stability of their masks")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", help="also write the tables (markdown, CSV) and, for runs with masks, the mask report "
                                 "(Jaccard heatmap, accuracy, structure, stability figures) into this folder")
    c.set_defaults(fn=cmd_compare)
    e = sub.add_parser("export", help="write a run's pruned model as dense, sparse, shrunk or ONNX")
    e.add_argument("run_dir")
    e.add_argument("--format", default="sparse", choices=["dense", "sparse", "shrunk", "onnx"])
    e.add_argument("--out", help="output file (default RUN_DIR/export/model.FORMAT)")
    e.set_defaults(fn=cmd_export)
    b = sub.add_parser("bench", help="bytes, FLOPs and CPU latency of a run's artifacts, with a diagnosis")
    b.add_argument("run_dir")
    b.add_argument("--repeats", type=int, default=30)
    b.set_defaults(fn=cmd_bench)
    w = sub.add_parser("sweep", help="run a grid of overrides x seeds as parallel runs; skips finished runs")
    w.add_argument("recipe")
    w.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="one axis of the grid (repeatable)")
    _many_runs_options(w, seeds=1)
    w.add_argument("--print-commands", action="store_true",
                   help="print one `prunelab run` command per run (for a scheduler's job array) and exit")
    w.set_defaults(fn=cmd_sweep)
    v = sub.add_parser("curve", help="accuracy against compression: the recipe's method and baselines at the same "
                                     "training budget, over seeds (table, CSV, plot)")
    v.add_argument("recipe")
    v.add_argument("--compressions", default="10,20,50,100", help="target compressions over prunable weights")
    v.add_argument("--baseline", action="append", metavar="LABEL=METHOD",
                   help="a baseline method (repeatable; default magnitude='{name: magnitude, allocation: global}')")
    _many_runs_options(v, seeds=3)
    v.add_argument("--out", help="output prefix for .md/.csv/.png (default RUNS_DIR/curve_RECIPE)")
    v.set_defaults(fn=cmd_curve)
    return p


def _many_runs_options(parser: argparse.ArgumentParser, seeds: int) -> None:
    """The options shared by the commands that run many recipes (sweep, curve)."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a fixed override for every run (repeatable)")
    parser.add_argument("--seeds", type=int, default=seeds, help="seeds 0..N-1 for every point")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / jobs)")
    parser.add_argument("--runs-dir", help="where run folders go (default $PRUNELAB_RUNS or ./runs)")
    parser.add_argument("--data-root", help="data root for every run")


def _runs_root_and_fixed(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Where the runs of sweep/curve go, and the overrides every run gets."""
    runs_root = args.runs_dir or os.environ.get("PRUNELAB_RUNS") or "runs"
    return runs_root, list(args.set or []) + ([f"data.root={args.data_root}"] if args.data_root else [])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after options: `prunelab run R --runs-dir X train.epochs=2`
        if getattr(args, "command", None) == "run" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "fn", None):
        build_parser().print_help()
        return 2
    try:
        return args.fn(args)
    except PrunelabError as exc:
        sys.stderr.write(f"prunelab: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted; rerun the same command to resume from the last finished stage\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
