"""Metrics to the experiment trackers people use, through one interface: a recipe's ``train.loggers``.

``tensorboard`` (``torch.utils.tensorboard``: event files), ``wandb`` (Weights & Biases; offline unless
``WANDB_MODE`` says otherwise: files a later ``wandb sync`` uploads) and ``mlflow`` (a file store, allowed with
``MLFLOW_ALLOW_FILE_STORE``, unless ``MLFLOW_TRACKING_URI`` names a server or database), each under the run folder's ``logs/``, each only where its package is
installed (else one sentence saying what to install). The built-in trainer hands every epoch's metrics
(``metrics.jsonl``'s numbers: losses, accuracy, perplexity, sparsity, learning rate) to each, at the trainer's
global step; pruning events and stage results go the same way. Rank 0 logs alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

NAMES = ("tensorboard", "wandb", "mlflow")


def _require(module: str, package: str, name: str):
    """``module`` imported, or one sentence saying which package logger ``name`` needs."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.loggers {name} needs the {package} package: pip install {package}") from None


def _numbers(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, folder: Path, name: str, config: dict) -> None:
        tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, folder: Path, name: str, config: dict) -> None:
        wandb = _require("wandb", "wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "prunelab"), name=name, config=config,
                              dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, folder: Path, name: str, config: dict) -> None:
        self.mlflow = mlflow = _require("mlflow", "mlflow-skinny", "mlflow")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # a file store in the run folder: MLflow 3 keeps it (in maintenance) behind this opt-in,
            uri = (folder / "mlruns").resolve().as_uri()  # and its database store needs SQLAlchemy, which
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny does not install
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("prunelab")
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(config).items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Loggers:
    """The recipe's loggers as one: ``log(metrics, step, prefix)`` sends the numeric entries of ``metrics``, named
    ``prefix/key``, to every one; ``close()`` ends them. ``names``: a subset of :data:`NAMES`."""

    def __init__(self, names: list[str], folder: str | Path, name: str, config: dict) -> None:
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise ConfigError(f"train.loggers are {', '.join(NAMES)}; got {unknown[0]!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        kinds = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
        self.loggers = []
        try:
            for n in dict.fromkeys(names):
                self.loggers.append(kinds[n](folder, name, config))
        except BaseException:
            self.close()
            raise

    def log(self, metrics: Mapping[str, Any], step: int, prefix: str) -> None:
        numbers = _numbers(metrics, prefix)
        if numbers:
            for lg in self.loggers:
                lg.log(numbers, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
        self.loggers = []


class LogEpochs:
    """Trainer hook: every epoch's metrics to ``loggers`` under the stage's name, at the trainer's global step."""

    def __init__(self, loggers: Loggers) -> None:
        self.loggers = loggers

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self.loggers.log({k: v for k, v in metrics.items() if k not in ("stage", "epoch")}, trainer.global_step,
                         trainer.stage)
