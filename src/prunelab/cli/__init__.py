"""The ``prunelab`` command line: run recipes, list them, show a run's summary, evaluate and compare runs.

Every user mistake ends with one sentence on stderr and exit status 2, never a traceback. The parser is here;
the handlers are in :mod:`prunelab.cli.commands` and the tables they print in :mod:`prunelab.cli.render`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import PrunelabError
from . import commands


RUN_DIR_HELP = "a run folder (RUNS/NAME-HASH, printed by `prunelab run`)"
FORCE_HELP = "replace an existing output (a file, or a folder prunelab wrote; never a user's folder or a link)"
DATA_HELP = "data root, if the run's data is not where it was found ($PRUNELAB_DATA, else the run's own)"


def _int_in(lo: int, hi: int | None = None, what: str = "a number"):
    """An argparse type: an integer in [lo, hi], else one sentence saying the range."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: {what} is {rng}")
        return v
    return parse


def _threads_type():
    from ..limits import MAX_THREADS

    return _int_in(1, MAX_THREADS, f"the thread count (1 to 4x the {os.cpu_count() or 1} cores)")
RECIPE_HELP = "a built-in recipe name (`prunelab recipes`) or a YAML file"


def _error(message: str) -> None:
    """One line on stderr: characters that are not printable (a newline or a control character in a path the
    user gave) are written as their escapes, so the sentence stays one line whatever it quotes."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    sys.stderr.write(f"prunelab: error: {text}\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        _error(message)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = _Parser(prog="prunelab", description="Neural-network pruning: run recipes, inspect runs.")
    p.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run (or resume) a recipe; with no recipe, the quickstart")
    r.add_argument("recipe", nargs="?", help=RECIPE_HELP + "; default: the quickstart")
    r.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=3")
    _run_folder_options(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true",
                   help="train (or reuse) the dense model, print the per-layer pruning decision, retrain nothing")
    r.add_argument("--stop-after", metavar="STAGE", help="stop after this stage (resume later by rerunning)")
    r.add_argument("--threads", type=_threads_type(), help="torch threads (default: one for small work, else torch's default; "
                                               "see prunelab/experiment/threads.py)")
    r.set_defaults(fn=commands.cmd_run)
    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(fn=commands.cmd_recipes)
    s = sub.add_parser("show", help="print a run's summary as tables")
    s.add_argument("run_dir", help=RUN_DIR_HELP)
    s.set_defaults(fn=commands.cmd_show)
    v = sub.add_parser("verify", help="check every artifact of a run against the SHA-256 recorded when it was "
                                      "written (exit 1 if any differs)")
    v.add_argument("run_dir", help=RUN_DIR_HELP)
    v.set_defaults(fn=commands.cmd_verify)
    a = sub.add_parser("attack", help="accuracy of a run's dense and sparse models under FGSM and PGD")
    a.add_argument("run_dir", help=RUN_DIR_HELP)
    a.add_argument("--eps", default="0.05,0.1,0.2,0.3", help="L-inf radii in pixel space [0, 1]")
    a.add_argument("--attacks", default="fgsm,pgd", help="comma-separated: fgsm, pgd")
    a.add_argument("--steps", type=_int_in(1, 10_000, "--steps"), default=10, help="PGD steps")
    a.add_argument("--step-size", type=float, default=None, help="PGD step (default eps/4)")
    a.add_argument("--samples", type=_int_in(0, None, "--samples"), default=1000,
                   help="test samples to attack (0 = all)")
    a.add_argument("--data-root", help=DATA_HELP)
    a.add_argument("--dense-run", help="a run whose final model is the dense reference (for sparse-from-scratch runs)")
    a.set_defaults(fn=commands.cmd_attack)
    c = sub.add_parser("compare", help="table of finished runs (unpruned, fine-tuned, controls, over seeds) and "
                                       "the similarity, structure and stability of their masks")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", help="also write the tables (markdown, CSV) and, for runs with masks, the mask report "
                                 "(Jaccard heatmap, accuracy, structure, stability figures) into this folder")
    c.add_argument("--force", action="store_true", help=FORCE_HELP)
    c.set_defaults(fn=commands.cmd_compare)
    ev = sub.add_parser("eval", help="a language-model run's held-out perplexity at context lengths, and lm-eval "
                                     "tasks where lm-eval is installed")
    ev.add_argument("run_dir", help=RUN_DIR_HELP)
    ev.add_argument("--lengths", help="comma-separated context lengths in tokens (default: half the run's window "
                                      "and the window)")
    ev.add_argument("--tasks", help="comma-separated lm-eval tasks (needs the lm-eval extra and a run trained "
                                    "with data.tokenizer)")
    ev.add_argument("--limit", type=_int_in(1, None, "--limit"), help="examples per lm-eval task (default: all)")
    ev.add_argument("--batch-size", type=_int_in(1, 100_000, "--batch-size"), default=8)
    ev.add_argument("--data-root", help=DATA_HELP)
    ev.set_defaults(fn=commands.cmd_eval)
    e = sub.add_parser("export", help="write a run's pruned model as dense, sparse, shrunk, ONNX or a Hugging Face folder")
    e.add_argument("run_dir", help=RUN_DIR_HELP)
    e.add_argument("--format", default="sparse", choices=["dense", "sparse", "shrunk", "onnx", "hf", "gguf"],
                   help="hf: a folder AutoModelForCausalLM.from_pretrained loads (Hugging Face models only); gguf: "
                        "that folder converted by llama.cpp's convert_hf_to_gguf.py (see --llama-cpp)")
    e.add_argument("--llama-cpp", metavar="DIR", help="gguf: a llama.cpp checkout (default: $LLAMA_CPP)")
    e.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="gguf: the tensors' type (k-quants: llama.cpp's llama-quantize on the file)")
    e.add_argument("--quantize", choices=["int8", "int4"],
                   help="hf: weight-only int8 / int4 by torchao (pip install 'prunelab[quantize]'); "
                        "from_pretrained loads it with torchao installed")
    e.add_argument("--out", help="output file, or folder for hf (default RUN_DIR/export/model.FORMAT)")
    e.add_argument("--force", action="store_true", help=FORCE_HELP)
    e.add_argument("--data-root", help=DATA_HELP)
    e.set_defaults(fn=commands.cmd_export)
    b = sub.add_parser("bench", help="bytes, FLOPs and CPU latency of a run's artifacts, with a diagnosis")
    b.add_argument("run_dir", help=RUN_DIR_HELP)
    b.add_argument("--repeats", type=_int_in(1, 100_000, "--repeats"), default=30,
                   help="timed runs per artifact and batch size (median)")
    b.add_argument("--data-root", help=DATA_HELP)
    b.set_defaults(fn=commands.cmd_bench)
    w = sub.add_parser("sweep", help="run a grid of overrides x seeds as parallel runs; skips finished runs")
    w.add_argument("recipe", help=RECIPE_HELP)
    w.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="one axis of the grid (repeatable)")
    _many_runs_options(w, seeds=1)
    w.add_argument("--print-commands", action="store_true",
                   help="print one `prunelab run` command per run (for a scheduler's job array) and exit")
    w.set_defaults(fn=commands.cmd_sweep)
    v = sub.add_parser("curve", help="accuracy against compression: the recipe's method and baselines at the same "
                                     "training budget, over seeds (table, CSV, plot)")
    v.add_argument("recipe", help=RECIPE_HELP)
    v.add_argument("--compressions", default="10,20,50,100", help="target compressions over prunable weights")
    v.add_argument("--baseline", action="append", metavar="LABEL=METHOD",
                   help="a baseline method (repeatable; default magnitude='{name: magnitude, allocation: global}')")
    _many_runs_options(v, seeds=3)
    v.add_argument("--out", help="output prefix for .md/.csv/.png (default RUNS_DIR/curve_RECIPE)")
    v.add_argument("--force", action="store_true", help=FORCE_HELP)
    v.set_defaults(fn=commands.cmd_curve)
    from .disk import add_parser as add_prune_disk

    add_prune_disk(sub)
    return p


def _many_runs_options(parser: argparse.ArgumentParser, seeds: int) -> None:
    """The options shared by the commands that run many recipes (sweep, curve)."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a fixed override for every run (repeatable)")
    parser.add_argument("--seeds", type=_int_in(1, 1000, "--seeds"), default=seeds,
                        help="seeds 0..N-1 for every point")
    parser.add_argument("--jobs", type=_int_in(1, 256, "--jobs"), default=1, help="parallel processes")
    parser.add_argument("--threads", type=_threads_type(), help="torch threads per process (default: cores / jobs)")
    _run_folder_options(parser)


def _run_folder_options(parser: argparse.ArgumentParser) -> None:
    """--runs-dir and --data-root, shared by every command that runs recipes (read by commands.runs_root and
    commands.data_overrides)."""
    parser.add_argument("--runs-dir", help="where run folders go (default $PRUNELAB_RUNS or ./runs); runs that "
                                           "differ only in pruning share their dense training in RUNS/_dense")
    parser.add_argument("--data-root", help="data root (default $PRUNELAB_DATA or ./data)")


def main(argv: list[str] | None = None) -> int:
    # transformers imports torchao where it is installed, and that import makes torch log two deprecation notes
    # (register_constant on enums) through this logger on every model built: noise on the command line's stderr,
    # where a user's error is one sentence
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
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
        _error(str(exc))
        return exc.exit_code
    except BrokenPipeError:  # the reader of our output went away (`prunelab recipes | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 1
    except OSError as exc:  # the file system refused: full, too large, read-only, no permission, a name too long
        from ..outputs import describe_os_error

        _error(describe_os_error(exc))
        return 2
    except RecursionError:  # a structure nested beyond any recipe or record prunelab writes
        _error("an input is nested too deeply to be a recipe or a run record")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted; rerun the same command to resume from the last finished stage\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
