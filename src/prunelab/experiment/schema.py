"""The recipe schema (pydantic) and recipe loading with dotted command-line overrides.

A recipe is YAML with sections ``data``, ``model``, ``train`` and optionally ``prune``; unknown keys and bad
values are rejected with the key named. ``load_recipe(source, overrides)`` accepts a built-in name or a path.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from ..limits import MAX_ROUNDS, MAX_SEED, MAX_THREADS
from ..engine.schedules import Cubic, Iterative, OneShot, Schedule
from ..training.optim import OptimConfig
from .yaml_input import parse_yaml, read_yaml_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a finite number wherever one is meant


class DataConfig(_Strict):
    name: str = "digits"
    root: str | None = None
    batch_size: int = Field(128, ge=1)
    test_batch_size: int = Field(1000, ge=1)
    download: bool = False
    augment: bool | None = None
    train_subset: int | None = Field(None, ge=1)
    # text data sets (causal language models): window length and token budgets per split (None: all)
    seq_len: int = Field(128, ge=1)
    train_tokens: int | None = Field(None, ge=2)
    calibration_tokens: int | None = Field(None, ge=2)
    eval_tokens: int | None = Field(None, ge=2)
    tokenizer: str | None = None  # a local Hugging Face model folder whose tokenizer to use (default: bytes)


class ModelConfig(_Strict):
    name: str = "lenet300_100"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _not_derived(cls, v: dict[str, Any]) -> dict[str, Any]:
        derived = sorted({"num_classes", "input_shape", "vocab_size"} & set(v))
        if derived:
            raise ValueError(f"{', '.join(derived)} comes from the data set; remove it from model.kwargs")
        own = sorted({"name", "seed"} & set(v))  # the model's name and the recipe's seed have keys of their own
        if own:
            raise ValueError(f"{own[0]} is not a model argument here: set it as {'model.name' if own[0] == 'name' else 'seed'}")
        return v


class ScheduleConfig(_Strict):
    """How the runner drives pruning.

    iterative: ``rounds`` rounds (geometric, each removes the same fraction of what is alive), each followed
    by ``retrain.epochs`` epochs of retraining. oneshot: one round. cubic: one gradual stage of
    ``retrain.epochs`` epochs pruning from ``start_epoch`` to ``end_epoch`` every ``frequency_steps`` steps.
    """

    name: Literal["oneshot", "iterative", "cubic"] = "iterative"
    rounds: int = Field(5, ge=1, le=MAX_ROUNDS)
    start_epoch: float = Field(0.0, ge=0)
    end_epoch: float = Field(1.0, gt=0)
    frequency_steps: int = Field(100, ge=1, le=10 ** 9)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)


class CalibrationConfig(_Strict):
    """Calibration data of calibrated methods (pca, wanda, sparsegpt): the first ``samples`` training inputs (in
    the training order at that point; default: the method's own count), in batches of ``batch_size`` (default:
    the training batch size); ``precision`` of norms, Gram matrices and SparseGPT's solve; ``cache_dtype`` of the
    cached block inputs; ``sequential_targets`` globs naming the blocks (default: found); ``device`` where blocks
    compute, the model staying where it is (default: the model's device); ``distributed`` whether ranks under
    torchrun share the samples (default: whenever torch.distributed is initialised)."""

    samples: int | None = Field(None, ge=1, le=10 ** 9)
    batch_size: int | None = Field(None, ge=1)
    precision: Literal["float32", "float64"] = "float32"
    cache_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    sequential_targets: list[str] | None = Field(None, min_length=1)
    device: str | None = None
    distributed: bool | None = None

    def options(self):
        """The one :class:`prunelab.calibration.Options` these settings make (each checked there)."""
        from ..calibration.request import options

        return options(self.samples, self.device, self.cache_dtype, self.precision, self.sequential_targets,
                       self.distributed)


class DistillConfig(_Strict):
    """Recovery by distillation from the run's dense model (:mod:`prunelab.training.distill`)."""

    alpha: float = Field(0.5, ge=0, le=1)  # weight of the soft (teacher) term; 1 - alpha: the task loss
    temperature: float = Field(2.0, gt=0, le=1000)
    hidden: list[str] | None = Field(None, min_length=1)  # module names or globs whose outputs are matched too
    hidden_weight: float = Field(1.0, ge=0, le=1e6)


class PruneConfig(_Strict):
    method: str | dict[str, Any] = "magnitude"
    sparsity: float = Field(0.9, ge=0, lt=1)
    targets: dict[str, Any] | None = None
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    retrain: dict[str, Any] = Field(default_factory=dict)  # OptimConfig fields overriding ``train``
    final_epochs: int | None = Field(None, ge=0, le=100_000)  # retraining epochs of the last round (default retrain.epochs)
    # Rethinking the Value of Network Pruning's protocols, run after pruning on the final masks: finetune is the
    # pruning stages themselves; scratch_e / scratch_b train the pruned architecture from a fresh random init for
    # train.epochs / train.epochs x FLOPs(full)/FLOPs(pruned) (capped at scratch_b_cap x train.epochs);
    # lottery_reset trains it from the run's own initial weights; guided trains stage-averaged widths.
    controls: list[Literal["finetune", "scratch_e", "scratch_b", "lottery_reset", "guided"]] = Field(default_factory=list)
    scratch_b_cap: float | None = Field(None, ge=1)
    calibration: CalibrationConfig | None = None  # None: the method's own sample count, training batches
    distill: DistillConfig | None = None  # retraining distils the dense stage's model (None: the task loss)

    def engine_schedule(self, steps_per_epoch: int | None = None) -> Schedule:
        """The engine's :class:`~prunelab.engine.schedules.Schedule` of this section: ``oneshot`` and ``iterative``
        plan one event per round stage (the runner triggers each with ``pruner.prune_event``); ``cubic`` plans
        events at optimizer steps of the one gradual stage, converted from epochs with ``steps_per_epoch``."""
        s = self.schedule
        if s.name == "oneshot":
            return OneShot(sparsity=self.sparsity)
        if s.name == "iterative":
            return Iterative(sparsity=self.sparsity, rounds=s.rounds)
        if steps_per_epoch is None:
            raise ValueError("a cubic schedule needs the number of steps per epoch")
        start = int(s.start_epoch * steps_per_epoch)
        return Cubic(sparsity=self.sparsity, start=start, end=max(int(s.end_epoch * steps_per_epoch), start + 1),
                     frequency=s.frequency_steps, initial=s.initial_sparsity)

    @field_validator("retrain")
    @classmethod
    def _retrain_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(OptimConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown retrain option(s) {', '.join(unknown)}")
        return v


class Recipe(_Strict):
    name: str = Field("run", max_length=1000)  # the folder name is slugged to 80 characters (paths.slug)
    description: str = Field("", max_length=10_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("cpu", max_length=100)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)  # torch threads; None: chosen for the work (experiment/threads.py)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    prune: PruneConfig | None = None

    def retrain_config(self, final: bool = False) -> OptimConfig:
        """The optimizer settings of retraining: ``train`` with ``prune.retrain`` applied (and, for the last
        round, ``prune.final_epochs``)."""
        base = self.train.model_dump()
        base["bn_l1"] = 0.0  # sparsity training belongs to the dense stage, unless retrain asks for it
        base.update(self.prune.retrain if self.prune else {})
        if final and self.prune is not None and self.prune.final_epochs is not None:
            base["epochs"] = self.prune.final_epochs
        return _validate(OptimConfig, base, "prune.retrain")

    def _identity(self, with_root: bool = False) -> dict:
        """What names a run: the recipe without its defaults and without where its data was found (the same
        data under another path, or a relative root seen from another folder, is the same run)."""
        dump = self.model_dump(mode="json", exclude_defaults=True)
        # how the ranks share the training (ddp or fsdp) changes its results by float rounding only, as the
        # number of ranks does: a run started one way resumes the other; where metrics are also sent, not at all
        for parent, key in ((dump, "train"), (dump.get("prune") or {}, "retrain")):
            section = parent.get(key)
            if isinstance(section, dict):
                dropped = [section.pop(k) for k in ("parallel", "loggers") if k in section]
                if dropped and not section:
                    del parent[key]
        if "data" in dump and not with_root:
            dump["data"].pop("root", None)
            if not dump["data"]:
                del dump["data"]
        return dump

    def dense_fingerprint(self) -> str:
        """A hash of what the dense stage depends on (seed, device, data, model, train), not of pruning."""
        keys = ("seed", "device", "data", "model", "train")
        dump = self._identity()
        blob = json.dumps({k: v for k, v in dump.items() if k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def fingerprints(self) -> tuple[str, str]:
        """(the fingerprint, the one runs written before the data root left the identity were named by)."""
        return self.fingerprint(), self.fingerprint(with_root=True)

    def fingerprint(self, with_root: bool = False) -> str:
        """A short hash of everything that affects results (so a changed recipe starts a new run).

        Values left at their defaults are not hashed, so adding an option with a default to the schema does
        not move existing runs to new folders; nor is the description.
        """
        dump = self._identity(with_root)
        dump.pop("description", None)  # words about the recipe, and its thread count, do not change its results
        dump.pop("threads", None)
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _validate(cls: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in ((where,) if where else ()) + tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"recipe key {loc or '(top level)'}: {msg}") from None


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipes: {name: path}."""
    folder = resources.files("prunelab") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def apply_override(raw: dict, item: str) -> None:
    """Apply ``a.b.c=value`` to a raw recipe dict; the value is parsed as YAML (``3``, ``true``, ``[1, 2]``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key")
    value = parse_yaml(text, f"override {item[:60]!r}")
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if isinstance(nxt, str):  # "method: magnitude" overridden by method.allocation=global
            nxt = {"name": nxt}
        elif nxt is None:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def load_recipe(source: str | None, overrides: list[str] = ()) -> Recipe:
    """A validated Recipe from a built-in name or a YAML path (None = the quickstart), plus overrides."""
    source = source or "quickstart"
    path = Path(source)
    if not path.suffix:
        table = builtin_recipes()
        if source not in table:
            raise ConfigError(f"no recipe {source!r}: give a YAML file or one of {', '.join(sorted(table))}")
        path = table[source]
    raw = read_yaml_file(path)
    if raw is None or raw == {}:  # an empty file would silently train the defaults
        raise ConfigError(f"recipe {path} is empty; give at least its data, model and train sections")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections")
    raw.setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    recipe = _validate(Recipe, raw)
    prune = recipe.prune
    if prune is not None and prune.distill is not None and not (
            recipe.retrain_config().trains or recipe.retrain_config(final=True).trains):
        raise ConfigError("recipe key prune.distill: distillation is the loss of retraining, and no stage retrains "
                          "(prune.retrain.epochs and prune.final_epochs are 0); set one, or remove prune.distill")
    return recipe
