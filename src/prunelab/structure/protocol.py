"""The one protocol every kind of units of structure implements, so the Pruner, the summary and the cut treat
traced channels, transformer units (and any later kind: experts) alike."""
from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable

from torch import Tensor, nn

from ..engine.loop import Selection
from ..targets import Layout


@runtime_checkable
class Units(Protocol):
    """Units of structure of one model: what can be removed whole, and what else goes with it.

    A unit kind answers four questions; the Pruner asks them and writes the answers (it never lets a kind set
    its fields). ``select`` chooses through the engine's one loop (:func:`prunelab.engine.loop.choose`).
    """

    model: nn.Module

    def select(self, params: Mapping[str, Tensor], layouts: Mapping[str, Layout], gran, scores: dict[str, Tensor],
               masks: Mapping[str, Tensor], how: Selection) -> dict[str, Tensor]:
        """New masks of the targets whose units this pass removes (others: absent); ``scores`` (per weight, as the
        criterion gave them) may be consumed. Masks only shrink unless the selector revives."""
        ...

    def removed(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{group name: removed unit indices}`` of the groups that lost units under ``masks``."""
        ...

    def companion_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks (False = held at zero) of the parameters that are not targets but belong to removed units
        (biases, norm entries, embedding columns), so the masked model computes what the cut one does."""
        ...

    def report(self, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """The summary's account of these units: how many could go, how many went, and why the rest could not."""
        ...
