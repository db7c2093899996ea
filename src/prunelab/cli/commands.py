"""The command handlers: each turns parsed arguments into a call of the library and hands the result to a
renderer (:mod:`prunelab.cli.render`). User mistakes raise PrunelabError; :func:`prunelab.cli.main` turns them
into one line and exit status 2."""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
from pathlib import Path

from rich.markup import escape

from .render import console, print_attack, print_bench, print_plan, print_summary


def runs_root(args: argparse.Namespace) -> str:
    """Where run folders go: --runs-dir, else $PRUNELAB_RUNS, else ./runs."""
    return args.runs_dir or os.environ.get("PRUNELAB_RUNS") or "runs"


def data_overrides(args: argparse.Namespace) -> list[str]:
    """--data-root as a recipe override."""
    return [f"data.root={args.data_root}"] if args.data_root else []


def cmd_run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..experiment import Runner, load_recipe, run_dir_for
    from ..experiment.run_threads import choose_threads

    recipe_arg, overrides = args.recipe, list(args.overrides)
    if recipe_arg is not None and "=" in recipe_arg:  # `prunelab run train.epochs=2` runs the quickstart
        overrides.insert(0, recipe_arg)
        recipe_arg = None
    recipe = load_recipe(recipe_arg, overrides + data_overrides(args))
    from ..experiment.distributed import init_from_env

    info = init_from_env(recipe.device)  # torchrun: one process per rank, rank 0 writes and prints
    run_dir = run_dir_for(recipe, runs_root(args))
    con = console()
    runner = Runner(recipe, run_dir, progress=not args.no_progress and sys.stderr.isatty(),
                    log=lambda s: con.print(s, markup=False, soft_wrap=True), stop_after=args.stop_after)
    threads, why = choose_threads(runner.ctx, args.threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if info.main:
        where = f" ({info.world} processes)" if info.world > 1 else ""
        con.print(f"[bold]{escape(recipe.name)}[/]: {escape(recipe.description or '')}\n"
                  f"run folder: {escape(str(run_dir))}{where}\n"
                  f"torch threads: {threads or 'default'} ({escape(why)})")
    ok = False
    try:
        if args.dry_run:
            if info.world > 1:
                raise ConfigError("--dry-run runs in one process; start it without torchrun")
            print_plan(runner.dry_run(), con)
            return 0
        summary = runner.run()
        if summary and info.main:
            print_summary(summary, con, layers=False)
        ok = True
    finally:
        if info.world > 1:
            import torch.distributed as dist

            if ok:  # gloo aborts a rank whose peer tears the group down under it: leave together
                dist.barrier()
            dist.destroy_process_group()
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    # read here rather than through prunelab.experiment, which imports torch (2 s for a list of names); the
    # packaged recipes are prunelab's own files, so a plain safe_load serves
    from importlib import resources

    import yaml

    folder = resources.files("prunelab") / "recipes"
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name):
        desc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        print(f"{path.name.removesuffix('.yaml'):34s} {desc}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..experiment import load_summary, open_finished

    summary = load_summary(args.run_dir)
    open_finished(args.run_dir)  # the summary describes artifacts that are still there, unchanged
    print_summary(summary, console(), layers=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of a finished language-model run's dense and pruned models at context lengths; lm-eval tasks."""
    from ..errors import ConfigError
    from ..experiment import open_finished
    from ..experiment import paths as run_paths
    from ..experiment.evaluation import CONVENTION, default_lengths, lm_eval_tasks, perplexity_at
    from ..experiment.finished import load_final

    if args.tasks and importlib.util.find_spec("lm_eval") is None:  # refused before any work
        lm_eval_tasks(None, None, [])  # its one sentence
    try:
        lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else None
    except ValueError:
        raise ConfigError(f"--lengths takes comma-separated whole numbers of tokens, got {args.lengths!r}") from None
    ctx = open_finished(args.run_dir, args.data_root)
    if ctx.data.task != "causal_lm":
        raise ConfigError(f"prunelab eval measures language models; {args.run_dir} is a {ctx.data.task} run "
                          "(its accuracy is in prunelab show)")
    model, _ = load_final(ctx)
    models = {"dense": ctx.build_model(checkpoint=ctx.paths.stage(run_paths.DENSE))} if ctx.dense_trained else {}
    models["pruned"] = model
    at = perplexity_at(models, ctx.data.test, lengths or default_lengths(ctx.recipe.data.seq_len), ctx.recipe.device)
    print(f"held-out perplexity ({ctx.data.name}, {CONVENTION}):")
    print("| context | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
    for n, v in at.items():
        print(f"| {n} | " + " | ".join(f"{v[k]:.4f}" for k in models) + " |")
    if args.tasks:
        res = lm_eval_tasks(model, ctx.recipe.data.tokenizer, args.tasks.split(","), args.limit, args.batch_size,
                            ctx.recipe.device)
        print("\n| task | metric | pruned |\n|---|---|---|")
        for task, metrics in res.items():
            for k, v in metrics.items():
                print(f"| {task} | {k} | {v:.4f} |")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..experiment.verify import check_run, rerun_hint

    bad = check_run(args.run_dir)
    con = console()
    if not bad:
        con.print(f"{args.run_dir}: every artifact matches what was written", markup=False, soft_wrap=True)
        return 0
    for what, problems in bad:
        for p in problems:
            con.print(f"{what}: {p}", markup=False, soft_wrap=True)
    con.print(f"to recompute the damaged stages and the ones after them, run {rerun_hint(Path(args.run_dir))}",
              markup=False, soft_wrap=True)
    return 1


def cmd_attack(args: argparse.Namespace) -> int:
    from ..experiment.attack import attack_run
    from ..errors import ConfigError

    try:
        eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        raise ConfigError(f"--eps must be comma-separated numbers, got {args.eps!r}") from None
    if not all(0 <= e <= 1 for e in eps):  # pixel space [0, 1]: nan, inf and negatives are no radius
        raise ConfigError(f"--eps must be radii between 0 and 1 (pixel space), got {args.eps!r}")
    out = attack_run(args.run_dir, eps, args.attacks.split(","), args.samples or None, args.steps, args.step_size,
                     args.dense_run, args.data_root)
    print_attack(out, console())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..experiment.compare import compare_runs, heading, table_lines, write_table

    if args.out:  # refused before any work: a file, a link, a user's folder, or an earlier output without --force
        from ..outputs import check_output_folder

        check_output_folder(args.out, args.force)
    rows = compare_runs(args.run_dirs)
    lines, _ = table_lines(rows)
    print(heading(rows) + "\n")
    print("\n".join(lines))
    if args.out:  # written in a folder beside, then moved into place: an interrupted compare leaves nothing
        from ..experiment.mask_report import mask_report
        from ..outputs import install_folder, temp_folder_beside

        out, tmp = Path(args.out), temp_folder_beside(args.out)
        try:
            written = [out / Path(p).relative_to(tmp) for p in write_table(rows, tmp)]
            sim = mask_report(args.run_dirs, tmp)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        install_folder(tmp, out, "the tables and figures of prunelab compare", args.force)
        for path in written:
            print(f"wrote {path}")
        if sim:
            print("\nJaccard similarity of final masks (mean over pairs of runs), against random masks:\n")
            print("\n".join(sim))
            print(f"\nwrote jaccard, similarity, accuracy, structure and stability tables and figures to {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiment.sweep import commands, plan, run_sweep, table

    root, fixed = runs_root(args), list(args.set or []) + data_overrides(args)
    points = plan(args.recipe, list(args.grid or []), args.seeds, root, fixed)
    if args.print_commands:
        print("\n".join(commands(args.recipe, points, root)))
        return 0
    rows = run_sweep(args.recipe, points, root, args.jobs, threads=args.threads)
    print("\n".join(table(rows)))
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


def cmd_curve(args: argparse.Namespace) -> int:
    from ..experiment.curve import curve_points, parse_baselines, parse_compressions, run_curve, write_curve

    root, fixed = runs_root(args), list(args.set or []) + data_overrides(args)
    points = curve_points(args.recipe, parse_compressions(args.compressions), parse_baselines(args.baseline),
                          args.seeds, root, fixed)
    rows = run_curve(args.recipe, points, root, args.jobs, threads=args.threads)
    out = args.out or str(Path(root) / f"curve_{Path(args.recipe).stem}")
    if args.out:  # refused before any run: files in the way, or earlier outputs without --force
        from ..outputs import check_output_file

        for ext in ("md", "csv", "png"):
            check_output_file(f"{out}.{ext}", args.force)
    command = "prunelab " + " ".join(shlex.quote(a) for a in args.argv if a != "--force")  # what made the numbers
    print("\n".join(write_curve(rows, out, f"{args.recipe}: accuracy against compression", command)))
    print(f"\nwrote {out}.md, {out}.csv and {out}.png")
    return 0 if len(rows) == len(points) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from ..experiment.export_run import export_run

    path = export_run(args.run_dir, args.format, args.out, force=args.force, data_root=args.data_root,
                      llama_cpp=args.llama_cpp, outtype=args.outtype, quantize=args.quantize)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    print(f"wrote {path} ({size:,} bytes)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..experiment.export_run import bench_run

    print_bench(bench_run(args.run_dir, args.repeats, args.data_root), args.run_dir, args.repeats, console())
    return 0
