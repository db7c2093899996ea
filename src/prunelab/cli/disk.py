"""``prunelab prune-disk``: a Hugging Face model folder pruned block by block from its files (calibration from
disk, :mod:`prunelab.calibration.disk`), written to a new folder plain transformers loads."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub) -> None:
    d = sub.add_parser("prune-disk", help="prune a Hugging Face model folder larger than memory, block by block, "
                                          "into a new folder (wanda, sparsegpt)")
    d.add_argument("folder", help="a local Hugging Face model folder (config.json and safetensors shards)")
    d.add_argument("--out", required=True, help="the new folder to write (must not exist, or be empty)")
    d.add_argument("--method", default="wanda",
                   help="a sequential calibrated method, by name or as YAML: wanda, sparsegpt, "
                        "'{name: sparsegpt, granularity: {name: nm, n: 2, m: 4}}'")
    d.add_argument("--sparsity", type=float, default=0.5, help="over the targeted weights (default 0.5)")
    d.add_argument("--data", default="pystdlib", help="calibration text: pystdlib (offline) or wikitext2")
    d.add_argument("--data-root", help="data root (default $PRUNELAB_DATA or ./data)")
    d.add_argument("--samples", type=int, default=128, help="calibration sequences (default 128)")
    d.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    d.add_argument("--device", help="where each block computes (default: the CPU); the weights stay on disk")
    d.add_argument("--cache-dtype", choices=["float32", "float16", "bfloat16"],
                   help="the cached block inputs on the host (default: as computed)")
    d.set_defaults(fn=cmd_prune_disk)


def cmd_prune_disk(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from ..calibration.disk import open_on_disk
    from ..data import load_data
    from ..errors import ConfigError
    from ..experiment.yaml_input import parse_yaml
    from ..methods import build_method
    from ..pruner import Pruner
    from ..registry import check_fraction
    from .render import console

    con = console()
    folder, out = Path(args.folder), Path(args.out)
    check_fraction("--sparsity", args.sparsity)
    for name, value in (("--samples", args.samples), ("--seq-len", args.seq_len)):
        if not 1 <= value <= 1_000_000:
            raise ConfigError(f"{name} is from 1 to 1,000,000, got {value}")
    method = parse_yaml(args.method, "--method")
    request = build_method(method).requirements().calibration
    if request is None or not request.sequential:
        raise ConfigError(f"prune-disk reads one block at a time, so the method must calibrate block by block: "
                          f"wanda or sparsegpt (sequential: true), not {args.method}")
    t0 = time.perf_counter()
    model, disk = open_on_disk(folder, out)
    try:
        tokenizer = str(folder) if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                         "tokenizer.model")) else None
        vocab = getattr(model.config, "vocab_size", 0) or 0
        if tokenizer is None and vocab < 256:
            raise ConfigError(f"{folder} has no tokenizer and a vocabulary of {vocab}: byte-level calibration text "
                              "needs 256 token ids")
        bundle = load_data(args.data, args.data_root, batch_size=min(args.samples, 8), test_batch_size=8,
                           seq_len=args.seq_len, tokens={"calibration": args.samples * (args.seq_len + 1),
                                                         "train": args.seq_len + 1, "heldout": args.seq_len + 1},
                           tokenizer=tokenizer)
        pruner = Pruner(model, method, sparsity=args.sparsity, schedule="manual")
        log = lambda line: con.print(escape(line))  # noqa: E731
        pruner.calibrate(bundle.calibration, samples=args.samples, offload=disk, device=args.device,
                         cache_dtype=args.cache_dtype, progress=log, targets=True)
        pruner.prune(args.sparsity)
        acc = pruner.accounting()["all_weights"]
        disk.finish()
    except BaseException:
        disk.discard()  # the files this command wrote, half a model: removed one by one, nothing else
        raise
    unread = acc.get("unread_counted_nonzero", 0)
    con.print(f"sparsity {pruner.masks.sparsity():.4f} over the {pruner.masks.numel():,} targeted weights; "
              f"{acc['sparsity']:.4f} over all {acc['params']:,} weight-matrix entries"
              + (f" (the {unread:,} untargeted ones, not read, counted nonzero)" if unread else ""))
    con.print(f"wrote {escape(str(out))} in {time.perf_counter() - t0:.0f} s: "
              f"transformers.AutoModelForCausalLM.from_pretrained({escape(repr(str(out)))}) loads it")
    return 0
