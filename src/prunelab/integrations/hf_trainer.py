"""A Hugging Face ``Trainer`` callback that prunes while it trains.

    from prunelab import Pruner
    from prunelab.integrations.hf_trainer import PruningCallback

    pruner = Pruner(model, "magnitude", schedule={"name": "cubic", "sparsity": 0.8, "start": 0, "end": 200,
                                                    "frequency": 50})
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    PruningCallback(pruner).attach(trainer)     # or callbacks=[PruningCallback(pruner)]: then report_to misses sparsity
    trainer.train()

Before every optimizer step (after the gradients of all accumulated micro-batches) the pruned weights' gradients
are zeroed (``after_backward``); after it the masks are enforced on the weights and the optimizer's moments, the
step is counted and the schedule prunes when it is due (``step``). The Trainer's logs gain ``sparsity`` (over
the pruner's targets; the reporting integrations get it when the callback is attached first, see
:meth:`PruningCallback.attach`); every checkpoint folder it saves gains the masks and the pruner's counters
(``prunelab_masks.safetensors``, ``prunelab_pruner.json``), and :meth:`PruningCallback.resume` reads them back
before ``trainer.train(resume_from_checkpoint=...)``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_text, read_json
from ..masks import Masks

try:
    from transformers import TrainerCallback
except ImportError:  # the module still imports, and says what is missing when used
    TrainerCallback = object

MASKS, STATE = "prunelab_masks.safetensors", "prunelab_pruner.json"


class PruningCallback(TrainerCallback):
    """Drives ``pruner`` from a ``transformers.Trainer`` (see the module docstring)."""

    def __init__(self, pruner) -> None:
        if TrainerCallback is object:
            raise ConfigError("PruningCallback needs transformers: pip install 'prunelab[hf]' accelerate")
        self.pruner = pruner

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.after_backward()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.pruner.step(getattr(optimizer, "optimizer", optimizer))  # accelerate's wrapper holds the real one

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs["sparsity"] = self.pruner.masks.sparsity()  # seen by the callbacks after this one
        if state.log_history and all(state.log_history[-1].get(k) == v for k, v in logs.items() if k != "sparsity"):
            state.log_history[-1]["sparsity"] = logs["sparsity"]  # the entry the Trainer just recorded

    def attach(self, trainer) -> "PruningCallback":
        """Add this callback to ``trainer`` ahead of the others, so the reporting integrations it was built with
        (``report_to``: TensorBoard, W&B, MLflow, ...) log ``sparsity`` too (callbacks given to the Trainer come
        after them)."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.pruner.masks.save(folder / MASKS)
            atomic_write_text(folder / STATE, json.dumps(self.pruner.state()))

    def resume(self, checkpoint: str | Path) -> None:
        """Masks and counters from a checkpoint folder this callback saved into (before resuming training)."""
        folder = Path(checkpoint)
        if not (folder / MASKS).is_file():
            raise ConfigError(f"{folder} holds no pruning masks ({MASKS}): it was not saved with PruningCallback")
        self.pruner.load_state(read_json(folder / STATE), Masks.load(folder / MASKS))
