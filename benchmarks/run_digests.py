"""Run identity: a fixed set of small runs (every method family, rewinding, controls, shrink, a cubic schedule),
and a digest of every stage's weights and masks plus the summary's numbers, to compare two versions of prunelab.

    python benchmarks/run_digests.py --runs-dir /tmp/a --out a.json          # on one commit
    python benchmarks/run_digests.py --runs-dir /tmp/b --out b.json --compare a.json   # on another

A refactoring that keeps results must print "identical" for every case (new summary keys are listed, not
failures). Needs MNIST under --data-root for the LeNet-5 and VGG cases; about 90 s on one thread.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

DATA = "../shared/data"

_LM = ["data.train_tokens=8192", "data.calibration_tokens=2048", "data.eval_tokens=2048", "data.seq_len=32",
       "model.kwargs={num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, "
       "num_key_value_heads: 2, max_position_embeddings: 32}", "train.epochs=1"]

CASES = {
  "quick": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.rounds=3"]),
  "drop": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.rounds=4",
            "prune.method={name: drop_pruning, q: null, anneal_rounds: 1, scope: global, revive_value: pruned}"]),
  "taylor": ("quickstart", ["train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=2",
            "prune.method={name: magnitude, criterion: {name: taylor, batches: 3}}"]),
  "imp_step": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.rounds=2",
            "prune.method={name: imp, rewind: step, rewind_step: 5}", "prune.controls=[scratch_e, lottery_reset]"]),
  "imp_reinit": ("quickstart", ["train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=2",
            "prune.method={name: imp, rewind: reinit}"]),
  "pca": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.name=oneshot",
            "prune.method={name: pca, samples: 256}"]),
  "wanda": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.name=oneshot",
            "prune.sparsity=0.6", "prune.method={name: wanda, samples: 64}"]),
  "sparsegpt": ("quickstart", ["train.epochs=2", "prune.retrain.epochs=1", "prune.schedule.name=oneshot",
            "prune.sparsity=0.6", "prune.method={name: sparsegpt, samples: 64}"]),
  "l1": ("quickstart", ["data.name=mnist", f"data.root={DATA}", "data.train_subset=512", "data.batch_size=64", "model.name=lenet5", "train.epochs=1", "prune.retrain.epochs=1", "prune.schedule.rounds=2",
            "prune.sparsity=0.5", "prune.method=l1_filter", "prune.controls=[scratch_e, scratch_b, lottery_reset]"]),
  "slim": ("vggs_fashion_slimming", ["data.name=mnist", f"data.root={DATA}", "data.train_subset=512", "data.batch_size=64", "train.epochs=1",
            "prune.retrain.epochs=1", "data.test_batch_size=2000"]),
  "cubic": ("lenet5_mnist_campfire", ["data.name=mnist", f"data.root={DATA}", "data.train_subset=512", "data.batch_size=64", 
            "prune.retrain.epochs=2", "prune.schedule.end_epoch=1", "prune.schedule.frequency_steps=2"]),
  # transformer units (the structure selection loop) and one-shot LM methods, on a tiny LLaMA: seconds each
  "lm_units": ("llama_pystdlib_units", _LM + ["prune.method.criterion={name: activation, samples: 8}"]),
  "lm_hidden": ("llama_pystdlib_units", _LM + ["prune.method.units=[hidden]", "prune.sparsity=0.25",
                "prune.method.criterion=magnitude"]),
  "lm_depth": ("llama_pystdlib_units", _LM + ["prune.method.units=[depth, mlp]", "prune.method.samples=8",
                "prune.method.criterion=magnitude"]),
  "lm_owl": ("llama_pystdlib_owl", _LM + ["prune.method.samples=8"]),
  "lm_dsnot": ("llama_pystdlib_dsnot", _LM + ["prune.method.samples=8"]),
}


def _digest(folder: Path) -> str:
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name in ("model.safetensors", "masks.safetensors"):
        if (folder / name).exists():
            tensors = load_file(str(folder / name))
            for k in sorted(tensors):
                h.update(k.encode())
                h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()[:12]


def run_all(runs_dir: Path, only: list[str]) -> dict:
    from prunelab.experiment import Runner, load_recipe, run_dir_for

    res = {}
    for key, (recipe, overrides) in CASES.items():
        if only and key not in only:
            continue
        r = load_recipe(recipe, overrides)
        d = run_dir_for(r, runs_dir)
        s = Runner(r, d, progress=False, log=lambda m: None).run()
        stages = {st.name: (_digest(st), json.loads((st / "state.json").read_text()).get("test_acc"))
                  for st in sorted((d / "stages").iterdir())}
        summary = {k: v for k, v in s.items() if k not in ("wall_seconds", "run_dir", "stages", "controls")}
        summary["controls"] = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                               for k, v in (s.get("controls") or {}).items()}
        summary["stage_rows"] = [{k: v for k, v in row.items() if k != "seconds"} for row in s["stages"]]
        res[key] = {"dir": d.name, "stages": stages, "summary": json.loads(json.dumps(summary, default=str))}
        print(f"{key}: {d.name}", flush=True)
    return res


def compare(a: dict, b: dict) -> bool:
    ok = True
    for key in a:
        if key not in b:
            continue
        new_keys = sorted(set(b[key]["summary"]) - set(a[key]["summary"]))
        bs = {k: v for k, v in b[key]["summary"].items() if k in a[key]["summary"]}
        same = a[key]["stages"] == b[key]["stages"] and a[key]["summary"] == bs
        ok &= same
        moved = f" (run folder renamed: {a[key]['dir']} -> {b[key]['dir']})" if a[key]["dir"] != b[key]["dir"] else ""
        print(f"{key}: {'identical' if same else 'DIFFERENT'}{moved}"
              + (f" (new summary keys: {new_keys})" if new_keys else ""))
    return ok


def main() -> None:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="digests of another version to compare with")
    ap.add_argument("--data-root", default=DATA)
    ap.add_argument("--cases", help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    DATA = a.data_root
    for case in CASES.values():  # the data root is part of the MNIST cases' overrides
        case[1][:] = [o.replace("data.root=../shared/data", f"data.root={DATA}") for o in case[1]]
    res = run_all(Path(a.runs_dir), a.cases.split(",") if a.cases else [])
    Path(a.out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    if a.compare:  # both sides as JSON has them (tuples become lists)
        ok = compare(json.loads(Path(a.compare).read_text()), json.loads(Path(a.out).read_text()))
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
