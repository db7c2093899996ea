"""The built-in training loop, optimizers and learning-rate schedules."""
from .optim import OptimConfig, build_optimizer, lr_at, set_lr
from .trainer import Trainer, evaluate

__all__ = ["OptimConfig", "build_optimizer", "lr_at", "set_lr", "Trainer", "evaluate"]
