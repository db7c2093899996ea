"""Every file and folder of a run, named in one place.

A run folder (``RUNS/NAME-HASH``)::

    recipe.yaml            the resolved recipe (its hash names the folder)
    init/                  checkpoint of the initial weights (rewinding, lottery_reset)
    rewind_K/              checkpoint after K optimizer steps of dense training (late rewinding)
    stages/STAGE/          one checkpoint per stage (see CHECKPOINT_FILES), plus metrics.jsonl
    stages/shrunk/shrunk.safetensors   the physically smaller model of a channel method
    metrics.jsonl          every stage's metrics, concatenated when the run finishes
    summary.json           the run's results
    seal.json              written last: SHA-256 and size of summary.json and metrics.jsonl; a run without it
                           has not finished, and a summary that does not match it is refused
    attack.json            ``prunelab attack``'s results
    export/                ``prunelab export`` / ``bench`` artifacts

Runs in one runs folder that differ only in pruning share their dense training through
``RUNS/_dense/MODEL-DENSEHASH/{dense,init,rewind_K}``. Nothing outside this module spells one of these names.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

# -- files of a checkpoint folder (see checkpoint.py) --------------------------------------------------
MODEL = "model.safetensors"
MASKS = "masks.safetensors"
OPTIMIZER = "optimizer.safetensors"
METHOD_STATE = "method_state.safetensors"
RNG = "rng.safetensors"
STATE = "state.json"  # written last: its presence marks the checkpoint complete; it lists the others' SHA-256
METRICS = "metrics.jsonl"  # a stage's training log (not part of the checkpoint's manifest)
CHECKPOINT_FILES = (MODEL, MASKS, OPTIMIZER, METHOD_STATE, RNG, STATE)

# -- stage names (folders under stages/) ---------------------------------------------------------------
DENSE = "dense"
GRADUAL = "gradual"
SHRUNK = "shrunk"
_ROUND = "round_"
_CONTROL = "control_"
_INIT = "init"
_REWIND = "rewind_"

#: Extension of each ``prunelab export`` format's default file name (``export/model.EXT``).
EXPORT_EXTENSIONS = {"dense": "safetensors", "sparse": "sparse.safetensors", "shrunk": "shrunk.safetensors",
                     "onnx": "onnx", "hf": "hf", "gguf": "gguf"}  # hf: a folder


#: The longest name part of a run folder: with "-HASH" it stays far below every file system's 255 bytes.
MAX_NAME = 80


def slug(text: str, default: str = "run") -> str:
    """A folder-name-safe form of ``text``: runs of anything but letters, digits, ``_ . + -`` become ``_``,
    leading and trailing dots and underscores go (so ``../../x`` is ``x`` and never leaves its folder), at most
    :data:`MAX_NAME` characters; ``default`` if nothing is left."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._")[:MAX_NAME].strip("._")
    return safe or default


def run_folder(runs_root: str | Path, name: str, fingerprint: str) -> Path:
    """``RUNS_ROOT/NAME-HASH``, the name slugged: a run folder is always a direct child of the runs folder."""
    return Path(runs_root) / f"{slug(name)}-{fingerprint}"


def folder_fingerprint(folder: str | Path) -> str | None:
    """The recipe hash a run folder is named by (``NAME-HASH``), or None when the name has none."""
    _, sep, tail = Path(folder).name.rpartition("-")
    return tail if sep and re.fullmatch(r"[0-9a-f]{10}", tail) else None


def round_stage(index: int) -> str:
    """The name of pruning round ``index`` (1-based): ``round_01``."""
    return f"{_ROUND}{index:02d}"


def control_stage(kind: str) -> str:
    """The name of a control's stage: ``control_scratch_e``."""
    return f"{_CONTROL}{kind}"


def control_kind(stage: str) -> str | None:
    """The control kind of a stage name (``scratch_e`` for ``control_scratch_e``), None for other stages."""
    return stage[len(_CONTROL):] if stage.startswith(_CONTROL) else None


@dataclass(frozen=True)
class _WithDenseCheckpoints:
    """A folder holding the dense training's extra checkpoints: initial weights and late-rewinding points."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def init(self) -> Path:
        return self.root / _INIT

    def rewind(self, step: int) -> Path:
        return self.root / f"{_REWIND}{step}"


@dataclass(frozen=True)
class RunPaths(_WithDenseCheckpoints):
    """The paths of one run folder."""

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def seal(self) -> Path:
        return self.root / "seal.json"

    @property
    def attack(self) -> Path:
        return self.root / "attack.json"

    def stage(self, name: str) -> Path:
        return self.root / "stages" / name

    def stage_metrics(self, name: str) -> Path:
        return self.stage(name) / METRICS

    @property
    def shrunk_model(self) -> Path:
        return self.stage(SHRUNK) / "shrunk.safetensors"

    @property
    def shrunk_config(self) -> Path:
        """The shrunk Hugging Face model's smaller config (its weights are the stage's checkpoint)."""
        return self.stage(SHRUNK) / "config.json"

    def export(self, fmt: str) -> Path:
        return self.root / "export" / f"model.{EXPORT_EXTENSIONS[fmt]}"

    def dense_cache(self, model_name: str, dense_fingerprint: str) -> "DenseCache":
        """The shared dense training of runs in the same runs folder that differ only in pruning."""
        # hf:/a/folder is a model name
        return DenseCache(self.root.parent / "_dense" / f"{slug(model_name, 'model')}-{dense_fingerprint}")

    def require_run_folder(self) -> None:
        """CheckpointError unless this is a run folder (a folder holding its recipe.yaml)."""
        if not self.root.exists():
            raise CheckpointError(f"{self.root} does not exist")
        if self.root.is_file():
            raise CheckpointError(f"{self.root} is a file, not a run folder (RUNS/NAME-HASH, printed by prunelab run)")
        if not self.recipe.is_file():
            raise CheckpointError(f"{self.root} is not a run folder (no {self.recipe.name})")

    def require_finished(self) -> None:
        """CheckpointError unless this is a run folder whose run has finished."""
        self.require_run_folder()
        if not self.summary.is_file() or not self.seal.is_file():
            raise CheckpointError(f"{self.root} has not finished (no {self.summary.name}); rerun it first")


@dataclass(frozen=True)
class DenseCache(_WithDenseCheckpoints):
    """``RUNS/_dense/MODEL-DENSEHASH``: the checkpoints of one dense training, shared by runs."""

    @property
    def dense(self) -> Path:
        return self.root / DENSE


def is_complete(folder: str | Path) -> bool:
    """A checkpoint folder is complete once its state.json exists (it is written last)."""
    return (Path(folder) / STATE).is_file()
