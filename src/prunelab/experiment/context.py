"""The run context: what every stage of a run shares, as a public API (recipe, paths, data, builders).

The runner, the stages, the controls, and the commands that read a finished run (export, bench, attack) all go
through a :class:`RunContext`; none reaches into another's internals.
"""
from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data import DataSpec, data_spec, load_data, resolve_root
from ..errors import CheckpointError, ConfigError
from ..masks import Masks
from ..methods import Method, build_method
from ..models import build_model
from ..pruner import Pruner
from ..engine.schedules import Schedule
from ..training import OptimConfig, Trainer, build_optimizer, evaluate
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import check_same, current
from .paths import RunPaths, folder_fingerprint
from .schema import Recipe, load_recipe

SCRATCH_SEED = 10_007  # added to the run's seed: a fresh init, different from the one the large model had


class EpochLine:
    """A trainer hook writing one line per finished epoch (what the progress bar shows, for a log file), and
    within a long epoch a line of the running figures at most every ``every`` seconds (an epoch of a language
    model can run for many minutes with nothing said)."""

    def __init__(self, log, every: float = 60.0) -> None:
        self.log, self.every, self._last = log, every, time.monotonic()

    def on_progress(self, trainer, epoch: int, samples: int, info: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log(f"stage {trainer.stage}: epoch {epoch + 1}, step {trainer.global_step}, {info}")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self._last = time.monotonic()
        parts = [f"{k.removeprefix('test_')} {v:.4g}" for k, v in metrics.items()
                 if k in ("train_loss", "test_acc", "test_ppl", "test_loss", "sparsity") and isinstance(v, float)]
        self.log(f"stage {metrics['stage']}: epoch {metrics['epoch']} in {metrics['seconds']:.1f}s, " + ", ".join(parts))


class RunContext:
    """One run's shared resources. Only rank 0 logs and writes (``main``); data is loaded on first use.

    Args:
        recipe: the resolved recipe.
        run_dir: the run folder (see :mod:`prunelab.experiment.paths`).
        log: receives one line per event (rank 0 only).
        progress: progress bars during training (rank 0 only).
        share_dense: reuse the dense training of runs in the same runs folder that differ only in pruning.
    """

    def __init__(self, recipe: Recipe, run_dir: str | Path, log: Callable[[str], None] = print,
                 progress: bool = True, share_dense: bool = True) -> None:
        self.recipe = recipe
        self.paths = RunPaths(Path(run_dir))
        self.dist = current()  # rank and world size under torchrun
        self.main = self.dist.main
        self.log = log if self.main else (lambda m: None)
        self.progress = progress and self.main
        self.share_dense = share_dense

    @classmethod
    def from_folder(cls, run_dir: str | Path, data_root: str | None = None) -> "RunContext":
        """The context of a run folder, from its own recipe.yaml. Its data is looked for under ``data_root``, else
        ``$PRUNELAB_DATA``, else where the run found it (the data root is not part of a run's identity)."""
        paths = RunPaths(Path(run_dir))
        paths.require_run_folder()
        recipe = load_recipe(str(paths.recipe))
        named = folder_fingerprint(paths.root)
        if named is not None and named not in recipe.fingerprints():  # the folder's name is the recipe's hash
            raise CheckpointError(f"{paths.recipe} is not the recipe this run was made from (its hash is "
                                  f"{recipe.fingerprint()}, the folder's {named}): restore it, or run the edited "
                                  f"recipe as a new run (prunelab run {paths.recipe} --runs-dir ...)")
        root = data_root or os.environ.get("PRUNELAB_DATA")
        if root:
            recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"root": root})})
        return cls(recipe, paths.root, log=lambda m: None, progress=False)

    def resolved_recipe(self) -> Recipe:
        """The recipe as a run folder records it: the data root made absolute, so the commands that read the run
        later find its data from any working folder (the root is not part of the run's identity)."""
        d = self.recipe.data
        return self.recipe.model_copy(update={"data": d.model_copy(update={"root": str(resolve_root(d.root).resolve())})})

    # -- resources --------------------------------------------------------------------------------------
    @cached_property
    def data(self):
        """The recipe's data set; under torchrun each rank gets its shard of every epoch."""
        d, world = self.recipe.data, self.dist.world
        if d.batch_size % world:
            raise ConfigError(f"data.batch_size {d.batch_size} must be divisible by the {world} processes")
        bundle = load_data(d.name, d.root, d.batch_size // world, d.test_batch_size, self.recipe.seed, d.download,
                           d.augment, train_subset=d.train_subset, shard=(self.dist.rank, world), seq_len=d.seq_len,
                           tokens={"train": d.train_tokens, "calibration": d.calibration_tokens,
                                   "heldout": d.eval_tokens}, tokenizer=d.tokenizer)
        if self.recipe.device.startswith("cuda") and torch.cuda.is_available():
            from ..data.loader import TensorLoader

            for loader in vars(bundle).values():  # batches in pinned memory: their non_blocking copies overlap
                if isinstance(loader, TensorLoader):
                    loader.pin_memory = True
        return bundle

    @cached_property
    def spec(self) -> DataSpec:
        """Input shape, classes, dtype and task of the recipe's data, without loading it where the name tells
        (every image data set; text as bytes): building a model for export or bench reads no data."""
        d = self.recipe.data
        known = data_spec(d.name, d.seq_len, d.tokenizer)
        if known is not None:
            return known
        return DataSpec(tuple(self.data.input_shape), self.data.num_classes, self.data.input_dtype, self.data.task)

    @cached_property
    def method(self) -> Method | None:
        """The recipe's pruning method (None for a dense recipe)."""
        return build_method(self.recipe.prune.method) if self.recipe.prune else None

    @cached_property
    def schedule(self) -> Schedule:
        """The engine's schedule of the recipe: the one source of every round's target and of the final event.
        Only a cubic schedule counts optimizer steps, so only it loads the data here (steps per epoch)."""
        p = self.recipe.prune
        if p is None:
            raise ConfigError("this recipe has no prune section, so no pruning schedule")
        steps = len(self.data.train) if p.schedule.name == "cubic" else None
        return p.engine_schedule(steps)

    def calibration_batches(self):
        """Batches for calibration, the same on every rank: the data set's own calibration split when it has one
        (text: its windows in an order drawn from the recipe's seed); else the training loader itself in one process;
        under torchrun, or with ``prune.calibration.batch_size``, an unsharded loader over the same split,
        order and augmentation (each rank's own loader holds only its shard, and calibrated methods would decide
        different masks on different ranks)."""
        from ..data.loader import TensorLoader

        train, cal = self.data.train, self.recipe.prune.calibration if self.recipe.prune else None
        if self.data.calibration is not None:  # a split of its own (text), already the same on every rank
            train = self.data.calibration
            if cal is None or not cal.batch_size:
                return train
        if self.dist.world == 1 and (cal is None or not cal.batch_size):  # the other keys choose no batches
            return train
        if not isinstance(train, TensorLoader):  # a folder-backed set (ImageNet) has no unsharded view here
            raise ConfigError("prune.calibration and calibrated methods under torchrun need an in-memory data set")
        batch = cal.batch_size if cal is not None and cal.batch_size else self.recipe.data.batch_size
        loader = TensorLoader(train.x, train.y, batch, shuffle=train.shuffle, seed=train.seed,
                              crop_pad=train.crop_pad, flip=train.flip)
        loader.set_epoch(train.epoch)
        return loader

    def example_inputs(self) -> torch.Tensor:
        """One all-zero input batch (token ids for a language model), for tracing the model's channel coupling."""
        return torch.zeros((1,) + tuple(self.spec.input_shape), dtype=self.spec.input_dtype,
                           device=self.recipe.device)

    def data_identity(self) -> dict:
        """The recipe's data set as it is now, wherever it was found (:mod:`prunelab.data.identity`)."""
        from ..data.identity import identity

        d = self.recipe.data
        return identity(d.name, d.root, d.tokenizer)

    def check_same_data(self, dense_folder: Path) -> None:
        """ConfigError when the data found now is not the data the dense model in ``dense_folder`` was trained on
        (its state records the identity); checkpoints from before identities were recorded are taken as they are."""
        from ..data.identity import difference
        from ..io import read_json
        from .paths import STATE

        recorded = read_json(Path(dense_folder) / STATE).get("data")
        if not isinstance(recorded, dict):
            return
        diff = difference(recorded, self.data_identity())
        if diff is not None:
            raise ConfigError(f"the {self.recipe.data.name} data found under {resolve_root(self.recipe.data.root)} is "
                              f"not the data this run was trained on ({diff}): point --data-root at that data, or "
                              "start a new run (another --runs-dir or name)")

    # -- builders ---------------------------------------------------------------------------------------
    def build_model(self, checkpoint: str | Path | None = None, seed: int | None = None) -> nn.Module:
        """The recipe's model, initialised from ``seed`` (default: the recipe's seed) without touching the global
        RNG; with ``checkpoint``, its weights are then loaded from that checkpoint folder."""
        r = self.recipe
        language_model = r.model.name.startswith("hf:")  # the Hugging Face models built here are causal LMs
        mismatch = language_model != (self.spec.task == "causal_lm")
        if mismatch and not language_model:  # before building: an image model cannot even be built for text
            raise self._pairing_error()
        model = build_model(r.model.name, self.spec.input_shape, self.spec.num_classes,
                            seed=r.seed if seed is None else seed, **r.model.kwargs).to(r.device)
        if mismatch:  # after building, so a bad Hugging Face model spec is named first
            raise self._pairing_error()
        if language_model:
            from ..models.hf import max_positions

            limit = max_positions(model)
            if limit is not None and r.data.seq_len > limit:
                raise ConfigError(f"data.seq_len {r.data.seq_len} is longer than the {limit} positions {r.model.name} "
                                  "embeds: shorten data.seq_len or give the model more positions")
        if checkpoint is not None:
            load_checkpoint(checkpoint, model, restore_rng=False)
        return model

    def _pairing_error(self) -> ConfigError:
        r, language_model = self.recipe, self.recipe.model.name.startswith("hf:")
        return ConfigError(f"model {r.model.name} is {'a language model' if language_model else 'an image model'} "
                           f"but data {r.data.name} is {'image classification' if language_model else 'text'}: "
                           "pair hf: models with text data (pystdlib, wikitext2) and the others with image data")

    def build_pruner(self, model: nn.Module, schedule: Schedule | str = "manual", auto_prune: bool = True) -> Pruner:
        """A Pruner of the recipe's method and targets on ``model``: ``"manual"`` (masks installed or pruned by
        the caller), or an engine schedule (``self.schedule``) driven by steps or, ``auto_prune=False``, by
        the caller's ``prune_event``."""
        p = self.recipe.prune
        return Pruner(model, method=p.method, schedule=schedule,
                      sparsity=p.sparsity if isinstance(schedule, str) else None, targets=p.targets,
                      seed=self.recipe.seed, example_inputs=self.example_inputs(), auto_prune=auto_prune)

    def fixed_pruner(self, model: nn.Module, masks: Masks) -> Pruner:
        """A Pruner that holds ``masks`` fixed on ``model`` (its manual schedule never prunes)."""
        pruner = self.build_pruner(model)
        pruner.set_masks(masks)
        return pruner

    def sharded(self, cfg: OptimConfig) -> bool:
        """Whether training under ``cfg`` shards the model (``parallel: fsdp`` with several ranks)."""
        return self.dist.world > 1 and cfg.parallel == "fsdp"

    def optimizer(self, model: nn.Module, cfg: OptimConfig, pruner: Pruner | None = None,
                  teacher: nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimizer of a training stage, built once the model is laid out for ``cfg.parallel``: sharded
        first under fsdp (with the distillation ``teacher``), the pruner re-bound to the sharded parameters."""
        if self.sharded(cfg):
            from ..training.parallel import shard

            shard(model, *([teacher] if teacher is not None else []))
            if pruner is not None:
                pruner.rebind()
        return build_optimizer(model, cfg)

    def trainer(self, model: nn.Module, opt, cfg, pruner: Pruner | None, stage: str,
                hooks: list | None = None, loss_fn=None) -> Trainer:
        """The built-in Trainer for ``model`` in ``stage`` (metrics to the stage's metrics.jsonl), under
        DistributedDataParallel when there are several ranks (sharded already under fsdp: :meth:`optimizer`)."""
        net = model
        if self.dist.world > 1:
            if not self.sharded(cfg):
                from torch.nn.parallel import DistributedDataParallel

                net = DistributedDataParallel(model)
            if pruner is not None:
                hooks = list(hooks or []) + [MaskSync(pruner, stage)]
        metrics = self.paths.stage_metrics(stage) if self.main else None
        if not self.progress and self.main:  # no bar (a pipe, a log file, --no-progress): a line per epoch instead
            hooks = list(hooks or []) + [EpochLine(self.log)]
        if self.loggers is not None:
            from ..training.loggers import LogEpochs

            hooks = list(hooks or []) + [LogEpochs(self.loggers)]
        return Trainer(net, opt, cfg, self.data.train, self.data.test, pruner=pruner, metrics_path=metrics,
                       progress=self.progress, device=self.recipe.device, stage=stage, hooks=hooks,
                       task=self.data.task, loss_fn=loss_fn, world=self.dist.world)

    @cached_property
    def loggers(self):
        """The recipe's experiment trackers (``train.loggers``, :mod:`prunelab.training.loggers`) writing under
        the run folder's ``logs/``, on rank 0; None without any. :meth:`close` ends them."""
        names = list(dict.fromkeys(self.recipe.train.loggers + self.recipe.retrain_config().loggers
                                   if self.recipe.prune else self.recipe.train.loggers))
        if not names or not self.main:
            return None
        from ..training.loggers import Loggers

        return Loggers(names, self.paths.root / "logs", self.paths.root.name, self.recipe.model_dump(mode="json"))

    def close(self) -> None:
        """End what the run opened for its whole length (the experiment trackers)."""
        if "loggers" in self.__dict__ and self.loggers is not None:
            self.loggers.close()
            del self.__dict__["loggers"]

    # -- checkpoints and evaluation -----------------------------------------------------------------------
    def save(self, folder: Path, model: nn.Module, masks: Masks | None = None, optimizer=None,
             extra: dict | None = None, method_state: dict | None = None) -> None:
        """save_checkpoint on rank 0 only; a sharded model's weights and optimizer state are gathered whole
        first (every rank must call it then), so the checkpoint is the one a single process writes."""
        from ..training.parallel import full_state, is_sharded

        if self.dist.world > 1 and is_sharded(model):
            model, optimizer = full_state(model, optimizer)
        if self.main:
            save_checkpoint(folder, model, masks, optimizer, extra=extra, method_state=method_state)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics on the test split (held-out text): loss, acc, and ppl for a language model."""
        return evaluate(model, self.data.test, self.recipe.device, self.data.task)

    def stage_record(self, model: nn.Module, pruner: Pruner | None, t0: float, trained: Trainer | None = None,
                     **more: Any) -> dict:
        """What a training stage's state.json records: test accuracy and loss, seconds, the pruner's state, and
        what ``trained`` did (:meth:`seen`)."""
        ev = self.evaluate(model)
        out = {"test_acc": ev["acc"], "test_loss": ev["loss"], "seconds": time.perf_counter() - t0}
        if trained is not None:
            out.update(self.seen(trained))
        if "ppl" in ev:
            out["test_ppl"] = ev["ppl"]
        if pruner is not None:
            out["pruner"] = pruner.state()
            out["sparsity"] = pruner.masks.sparsity()
        out.update(more)
        return out


    @property
    def dense_trained(self) -> bool:
        """The dense stage's model is trained, or loaded trained (a local Hugging Face folder); otherwise
        (``train.epochs`` 0 from a random init) a run trains sparse from scratch and has no dense model to report
        or to distil."""
        from ..models.hf import is_local

        name = self.recipe.model.name
        return self.recipe.train.trains or (name.startswith("hf:") and is_local(name[3:]))

    def seen(self, trained: Trainer) -> dict:
        """``steps`` and ``tokens`` (a language model's predicted tokens) or ``samples`` a training saw."""
        return {"steps": trained.global_step, "tokens" if self.data.task == "causal_lm" else "samples": trained.targets}


class MaskSync:
    """Trainer hook (several ranks): check the ranks' masks after every pruning event during training."""

    def __init__(self, pruner: Pruner, stage: str) -> None:
        self.pruner, self.stage, self.events = pruner, stage, pruner.events

    def on_batch_end(self, trainer, step: int, loss: float) -> None:
        if self.pruner.events != self.events:
            self.events = self.pruner.events
            check_same(self.pruner.masks, f"pruning event {self.events} in {self.stage}")
