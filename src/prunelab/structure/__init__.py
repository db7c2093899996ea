"""Units of structure: what must go together across tensors for a model to get smaller, and the cut that removes it.

One protocol (:class:`.protocol.Units`: ``select``, ``removed``, ``companion_masks``, ``report``) with two kinds
behind it, found once per model by :func:`.build.structure_for`:

- traced channels (:mod:`.channels`: Torch-Pruning's dependency graph; :mod:`.coupling`: coupled channel groups,
  ``nn.MultiheadAttention`` heads (:mod:`.heads`) and recurrent hidden units (:mod:`.recurrent`), each group
  probed by a trial shrink (:mod:`.probe`) within a trace budget (:mod:`.trace_budget`));
- transformer units of a Hugging Face model of a known layout (:mod:`.families`, :mod:`.units`,
  :mod:`.transformer`): MLP channels, key-value groups, the hidden size and whole blocks.

The physical cut is here too: :mod:`.surgery` (traced models, through Torch-Pruning) and :mod:`.hf_surgery` (the
same transformers class with a smaller config), both checked by the one float64 comparison of
:mod:`.equivalence`. Selection itself is the engine's one loop (:mod:`prunelab.engine.loop`).
"""
from __future__ import annotations

from .build import channel_units, structure_for
from .families import FAMILIES
from .recognize import family_of
from .protocol import Units
from .transformer import TransformerUnits, transformer_units
from .units import KINDS

__all__ = ["FAMILIES", "KINDS", "TransformerUnits", "Units", "channel_units", "family_of", "structure_for",
           "transformer_units"]
