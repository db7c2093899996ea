"""The experiment runner: a recipe becomes a run folder of stages that resume where they stopped.

Stages: ``dense`` (train the dense model; its initial weights are kept for rewinding; runs in the same
runs folder that differ only in pruning share it through ``RUNS/_dense``), then either pruning
rounds ``round_01 .. round_R`` (prune to the round's sparsity, retrain) or one ``gradual`` stage (prune on a
cubic schedule while training), then, for channel methods, ``shrunk`` (the physically smaller model) and
the recipe's ``prune.controls`` (``control_scratch_e`` ...; see :mod:`prunelab.experiment.controls`), then
``summary.json``. Every stage starts from the previous stage's
checkpoint, in an uninterrupted run as in a resumed one, so both end bit-identical on CPU. A stage whose
checkpoint is complete is skipped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..analysis import count_flops, count_params
from ..data import load_data
from ..errors import ConfigError
from ..export import compact_bytes
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from ..models import build_model, reinit
from ..pruner import Pruner
from ..schedules import Cubic, geometric_rounds
from ..training import Trainer, build_optimizer, evaluate
from .checkpoint import is_complete, load_checkpoint, load_method_state, save_checkpoint
from .controls import SCRATCH_SEED, control_stage, shrink_stage
from .distributed import barrier, check_same, current
from .schema import Recipe


def run_dir_for(recipe: Recipe, runs_root: str | Path) -> Path:
    """``RUNS_ROOT/NAME-HASH``: the same resolved recipe always maps to the same folder."""
    return Path(runs_root) / f"{recipe.name}-{recipe.fingerprint()}"


class Runner:
    """Runs (or resumes) one recipe in ``run_dir``; ``log`` receives one line per event."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print, stop_after: str | None = None, share_dense: bool = True) -> None:
        self.recipe, self.dir = recipe, Path(run_dir)
        self.share_dense = share_dense
        self.dist = current()  # rank and world size under torchrun; only rank 0 logs and writes
        self.main = self.dist.main
        self.progress, self.stop_after = progress and self.main, stop_after
        self.log = log if self.main else (lambda m: None)
        self.data = None

    # -- helpers --------------------------------------------------------------------------------
    def _data(self):
        if self.data is None:
            r = self.recipe
            d = r.data
            world = self.dist.world
            if d.batch_size % world:
                raise ConfigError(f"data.batch_size {d.batch_size} must be divisible by the {world} processes")
            self.data = load_data(d.name, d.root, d.batch_size // world, d.test_batch_size, r.seed, d.download,
                                  d.augment, train_subset=d.train_subset, shard=(self.dist.rank, world))
        return self.data

    def _model(self):
        torch.manual_seed(self.recipe.seed)
        data = self._data()
        return build_model(self.recipe.model.name, data.input_shape, data.num_classes,
                           **self.recipe.model.kwargs).to(self.recipe.device)

    def _pruner(self, model, schedule: Any = "manual"):
        p = self.recipe.prune
        return Pruner(model, method=p.method, schedule=schedule, sparsity=p.sparsity, targets=p.targets,
                      seed=self.recipe.seed, example_inputs=self.example_inputs())

    def example_inputs(self) -> torch.Tensor:
        """One all-zero input batch, for tracing the model's channel coupling."""
        return torch.zeros((1,) + tuple(self._data().input_shape), device=self.recipe.device)

    def _dense_cache(self) -> Path | None:
        """Where runs that differ only in pruning share their dense training (next to the run folders)."""
        if not self.share_dense:
            return None
        return self.dir.parent / "_dense" / f"{self.recipe.model.name}-{self.recipe.dense_fingerprint()}"

    def prune_stages(self) -> list[str]:
        """The stages that train with the pruner: dense, then rounds or the gradual stage."""
        p = self.recipe.prune
        if p is None:
            return ["dense"]
        if p.schedule.name == "cubic":
            return ["dense", "gradual"]
        rounds = 1 if p.schedule.name == "oneshot" else p.schedule.rounds
        return ["dense"] + [f"round_{i:02d}" for i in range(1, rounds + 1)]

    def stage_names(self) -> list[str]:
        names = self.prune_stages()
        p = self.recipe.prune
        if p is None:
            return names
        if self._method().channels:
            names.append("shrunk")
        return names + [f"control_{c}" for c in dict.fromkeys(p.controls) if c != "finetune"]

    def _stage_dir(self, name: str) -> Path:
        return self.dir / "stages" / name

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run every stage not yet complete, then write and return summary.json's content."""
        dev = self.recipe.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} was asked for but CUDA is not available here; add device=cpu")
        if self.recipe.prune is not None:  # fail on a bad method or target before any training
            self._pruner(self._model())
        self.dir.mkdir(parents=True, exist_ok=True)
        recipe_file = self.dir / "recipe.yaml"
        if self.main and not recipe_file.exists():
            atomic_write_text(recipe_file, yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False))
        names = self.stage_names()
        for i, name in enumerate(names):
            folder = self._stage_dir(name)
            if is_complete(folder):
                self.log(f"stage {name}: done, skipped")
            else:
                t0 = time.perf_counter()
                self._run_stage(name, names[i - 1] if i else None, folder)
                self.log(f"stage {name}: finished in {time.perf_counter() - t0:.1f}s")
            barrier()  # the other ranks read what rank 0 wrote
            if self.stop_after == name:
                return {}
        summary = self._summarize(names) if self.main else {}
        barrier()
        return summary if self.main else read_json(self.dir / "summary.json")

    def save(self, folder: Path, model, masks=None, optimizer=None, extra: dict | None = None,
             method_state: dict | None = None) -> None:
        """save_checkpoint on rank 0 only."""
        if self.main:
            save_checkpoint(folder, model, masks, optimizer, extra=extra, method_state=method_state)

    def trainer(self, model, opt, cfg, pruner, metrics_path: Path | None, stage: str, hooks: list | None = None):
        """The built-in Trainer for ``model``, under DistributedDataParallel when there are several ranks."""
        data = self._data()
        net = model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model)
            if pruner is not None:
                hooks = list(hooks or []) + [_MaskSync(pruner, stage)]
        return Trainer(net, opt, cfg, data.train, data.test, pruner=pruner,
                       metrics_path=metrics_path if self.main else None, progress=self.progress,
                       device=self.recipe.device, stage=stage, hooks=hooks)

    def dry_run(self) -> dict:
        """Train (or reuse) the dense stage, then decide the final masks in memory, without retraining.

        Returns the pruner's summary (per-layer rows with units kept) plus ``plan`` when the method
        reports one; nothing is written beyond the dense stage.
        """
        if self.recipe.prune is None:
            raise ConfigError("a dry run needs a recipe with a prune section")
        names = self.prune_stages()
        self.stop_after = "dense"
        self.run()
        model = self._model()
        load_checkpoint(self._stage_dir("dense"), model, restore_rng=False)
        pruner = self._pruner(model)
        pruner.planned_events = 1
        self._calibrate(pruner, model, self._data())
        pruner.prune(self.recipe.prune.sparsity, final=True)
        out = pruner.summary()
        out["plan"] = pruner.history[-1].get("plan")
        out["rounds"] = len(names) - 1
        return out

    def _run_stage(self, name: str, prev: str | None, folder: Path) -> None:
        r = self.recipe
        metrics_path = folder / "metrics.jsonl"
        if self.main and metrics_path.exists():
            metrics_path.unlink()  # a killed attempt's partial metrics
        final = self.prune_stages()[-1]
        if name == "shrunk":
            return shrink_stage(self, final, folder) if self.main else None
        if name.startswith("control_"):
            return control_stage(self, name, final, folder, metrics_path)
        model = self._model()
        data = self._data()
        t0 = time.perf_counter()
        if prev is None:  # dense
            cache = self._dense_cache()
            keep = ["init"] + ([f"rewind_{self._rewind_step()}"] if self._rewind_step() else [])
            if cache is not None and is_complete(cache / "dense") and all(is_complete(cache / k) for k in keep):
                if self.main:
                    for k in keep:
                        _copy_checkpoint(cache / k, self.dir / k)
                    _copy_checkpoint(cache / "dense", folder)
                self.log(f"stage {name}: reused the identical dense training in {cache}")
                return
            self.save(self.dir / "init", model, extra={"note": "initial weights, for rewinding"})
            cfg = r.train
            opt = build_optimizer(model, cfg)
            hooks = [_SaveAtStep(self._rewind_step(), self.dir / keep[-1], self)] if self._rewind_step() else []
            self.trainer(model, opt, cfg, None, metrics_path, name, hooks).fit()
            barrier()
            if hooks and not is_complete(self.dir / keep[-1]):
                raise ConfigError(f"rewind_step {self._rewind_step()} is beyond the dense training's "
                                  f"{cfg.epochs * len(data.train)} steps")
            self.save(folder, model, None, opt, extra=self._stage_extra(model, None, t0))
            if cache is not None and self.main:
                for k in keep:
                    _copy_checkpoint(self.dir / k, cache / k)
                _copy_checkpoint(folder, cache / "dense")
            return
        masks, state = load_checkpoint(self._stage_dir(prev), model)
        cfg = r.retrain_config(final=name == final)
        sched = r.prune.schedule
        if name == "gradual":
            spe = len(data.train)
            cubic = Cubic(sparsity=r.prune.sparsity, start=int(sched.start_epoch * spe),
                          end=max(int(sched.end_epoch * spe), int(sched.start_epoch * spe) + 1),
                          frequency=sched.frequency_steps, initial=sched.initial_sparsity)
            pruner = self._pruner(model, cubic)
        else:
            pruner = self._pruner(model)
            if masks is not None:
                pruner.load_state(state.get("pruner", {"step_count": 0, "events": 0}), masks)
                pruner.method.load_state_tensors(load_method_state(self._stage_dir(prev)))
            rounds = 1 if sched.name == "oneshot" else sched.rounds
            pruner.planned_events = rounds
            index = int(name.split("_")[1])
            target = geometric_rounds(r.prune.sparsity, rounds)[index - 1]
            self._calibrate(pruner, model, data)
            pruner.prune(target, final=index == rounds)
            self._rewind(model, pruner, index)
            digests = check_same(pruner.masks, f"pruning in {name}")
            record = {"stage": name, "prune": pruner.history[-1]}
            if len(digests) > 1:
                record["rank_mask_digests"] = digests
            if self.main:
                _append_jsonl(metrics_path, record)
        opt = build_optimizer(model, cfg)
        pre = evaluate(model, data.test, r.device)
        self.log(f"stage {name}: sparsity {pruner.masks.sparsity():.4f}, accuracy before retraining {pre['acc']:.4f}")
        self.trainer(model, opt, cfg, pruner, metrics_path, name).fit()
        check_same(pruner.masks, f"training in {name}")
        extra = self._stage_extra(model, pruner, t0)
        extra["acc_before_retrain"] = pre["acc"]
        self.save(folder, model, pruner.masks, opt, extra=extra, method_state=pruner.method.state_tensors())

    def _rewind_step(self) -> int:
        m = self._method()
        return m.rewind_step if getattr(m, "rewind", None) == "step" else 0

    def _method(self):
        from ..methods import build_method

        return build_method(self.recipe.prune.method) if self.recipe.prune else None

    def _rewind(self, model, pruner: Pruner, index: int) -> None:
        """Set the surviving weights to the rewind point of an ``imp`` method (see methods/imp.py)."""
        how = getattr(pruner.method, "rewind", "none")
        if how == "none":
            return
        if how == "reinit":
            reinit(model, self.recipe.seed + SCRATCH_SEED + index)
        else:
            point = self.dir / ("init" if how == "init" else f"rewind_{self._rewind_step()}")
            load_checkpoint(point, model, restore_rng=False)
        pruner.set_masks(pruner.masks)  # pruned weights (and channel companions) back to zero

    def _calibrate(self, pruner: Pruner, model, data) -> None:
        """Hand calibration data to methods that use activations (pca); feed gradient-based criteria a few
        training batches before a pruning event."""
        if hasattr(pruner.method, "calibrate"):
            pruner.method.calibrate(pruner, data.train, self.recipe.device)
        crit = pruner.method.criterion_
        if not crit.needs_gradients:
            return
        crit.reset()  # exactly `batches` batches, not whatever retraining accumulated
        model.train()
        for i, (x, y) in enumerate(data.train):
            if i >= getattr(crit, "batches", 8):
                break
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x.to(self.recipe.device)), y.to(self.recipe.device)).backward()
            pruner.after_backward()
        model.zero_grad(set_to_none=True)

    def _stage_extra(self, model, pruner: Pruner | None, t0: float) -> dict:
        ev = evaluate(model, self._data().test, self.recipe.device)
        out = {"test_acc": ev["acc"], "test_loss": ev["loss"], "seconds": time.perf_counter() - t0}
        if pruner is not None:
            out["pruner"] = pruner.state()
            out["sparsity"] = pruner.masks.sparsity()
        return out

    # -- summary --------------------------------------------------------------------------------
    def _summarize(self, all_names: list[str]) -> dict:
        r = self.recipe
        names = self.prune_stages()
        stages = {n: read_json(self._stage_dir(n) / "state.json") for n in names}
        extra = {n: read_json(self._stage_dir(n) / "state.json") for n in all_names if n not in stages}
        model = self._model()
        masks, _ = load_checkpoint(self._stage_dir(names[-1]), model, restore_rng=False)
        data = self._data()
        params = count_params(model)
        flops = count_flops(model, data.input_shape, r.device)
        dense_model = self._model()
        load_checkpoint(self._stage_dir("dense"), dense_model, restore_rng=False)
        dense_flops = count_flops(dense_model, data.input_shape, r.device)
        summary = {
            "recipe": r.name, "run_dir": str(self.dir), "seed": r.seed,
            "method": r.prune.method if r.prune else None,
            "dense_acc": stages["dense"]["test_acc"] if r.train.epochs > 0 else None,  # None: trained sparse from scratch
            "pruned_acc": stages[names[-1]]["test_acc"] if r.prune else None,
            "params_total": params["total"], "params_nonzero": params["nonzero"],
            "compression_model": params["total"] / max(params["nonzero"], 1),
            "flops_dense": dense_flops["dense"], "flops_nonzero": flops["nonzero"],
            "wall_seconds": sum(s.get("seconds", 0.0) for s in stages.values()),
            "stages": [{"stage": n, "test_acc": s["test_acc"], "sparsity": s.get("sparsity", 0.0),
                        "acc_before_retrain": s.get("acc_before_retrain"), "seconds": s["seconds"]}
                       for n, s in stages.items()],
        }
        dense_bytes = (self._stage_dir(names[-1]) / "model.safetensors").stat().st_size
        summary["bytes_dense_file"] = dense_bytes
        if masks is not None:
            compact, formats = compact_bytes(model, masks)
            summary.update(bytes_compact_file=compact, compact_formats=formats)
            summary.update(prunable_params=masks.numel(), nonzero_prunable=masks.nonzero(),
                           sparsity_prunable=masks.sparsity(), compression_prunable=masks.compression_ratio(),
                           layers=masks.layer_stats())
        if "shrunk" in extra:
            sh = extra["shrunk"]
            summary["shrunk"] = {"params": sh["params"], "flops": sh["flops"], "bytes_file": sh["bytes"],
                                 "test_acc": sh["test_acc"], "changed_modules": sh["changed_modules"]}
        summary["controls"] = {n.removeprefix("control_"): {k: v for k, v in s.items() if k not in ("rng", "optimizer")}
                               for n, s in extra.items() if n.startswith("control_")}
        lines = []
        for n in all_names:
            p = self._stage_dir(n) / "metrics.jsonl"
            if p.exists():
                lines += p.read_text(encoding="utf-8").splitlines()
        atomic_write_text(self.dir / "metrics.jsonl", "".join(l + "\n" for l in lines))
        atomic_write_json(self.dir / "summary.json", summary)
        return summary


class _SaveAtStep:
    """Trainer hook: save the model after optimizer step ``step`` (the late-rewinding point)."""

    def __init__(self, step: int, folder: Path, runner: "Runner") -> None:
        self.step, self.folder, self.runner = step, folder, runner

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        if step == self.step:
            model = getattr(trainer.model, "module", trainer.model)  # unwrapped from DistributedDataParallel
            self.runner.save(self.folder, model, extra={"note": f"weights after {step} steps, for rewinding"})


class _MaskSync:
    """Trainer hook (several ranks): check the ranks' masks after every pruning event during training."""

    def __init__(self, pruner: Pruner, stage: str) -> None:
        self.pruner, self.stage, self.events = pruner, stage, pruner.events

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        if self.pruner.events != self.events:
            self.events = self.pruner.events
            check_same(self.pruner.masks, f"pruning event {self.events} in {self.stage}")


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint folder file by file (atomically each), state.json last so it marks completion."""
    files = sorted((p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.name == "state.json")
    for f in files:
        atomic_write_bytes(dst / f.name, f.read_bytes())


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def load_summary(run_dir: str | Path) -> dict:
    """summary.json of a finished run (CheckpointError when missing or corrupt)."""
    return read_json(Path(run_dir) / "summary.json")


__all__ = ["Runner", "run_dir_for", "load_summary"]
