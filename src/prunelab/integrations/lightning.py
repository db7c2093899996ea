"""A Lightning callback that prunes while it trains.

    from prunelab import Pruner
    from prunelab.integrations.lightning import PruningCallback

    pruner = Pruner(module, "magnitude", schedule={"name": "cubic", "sparsity": 0.8, "start": 0, "end": 200,
                                                     "frequency": 50})
    lightning.Trainer(callbacks=[PruningCallback(pruner)]).fit(module, loader)

Before every optimizer step the pruned weights' gradients are zeroed (``after_backward``); after it (seen at the
end of the batch that stepped: with ``accumulate_grad_batches`` only every n-th) the masks are enforced on the
weights and the optimizer's moments, the step is counted and the schedule prunes when due (``step``). The
sparsity over the pruner's targets is logged (``self.log``: any Lightning logger gets it), and the masks and
counters travel in Lightning's checkpoints (``state_dict`` / ``load_state_dict`` of the callback).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..masks import Masks

try:
    from lightning.pytorch import Callback
except ImportError:
    Callback = object


class PruningCallback(Callback):
    """Drives ``pruner`` from a ``lightning.Trainer`` (see the module docstring)."""

    def __init__(self, pruner) -> None:
        if Callback is object:
            raise ConfigError("the Lightning PruningCallback needs lightning: pip install lightning")
        self.pruner, self._stepped = pruner, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.pruner.after_backward()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._stepped:  # no optimizer step in this batch (gradients accumulating)
            return
        self._stepped = trainer.global_step
        self.pruner.step(trainer.optimizers[0])
        pl_module.log("sparsity", self.pruner.masks.sparsity(), on_step=True, prog_bar=True)

    def state_dict(self) -> dict:
        return {"pruner": self.pruner.state(), "masks": {n: m.cpu() for n, m in self.pruner.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state(state["pruner"], Masks(state["masks"]))
        self._stepped = self.pruner.step_count
