"""The engine: scores -> groups -> budget per tensor -> selection -> mask, under a schedule.

It owns the pipeline's parts and their registries (:mod:`.criteria`, :mod:`.granularity`, :mod:`.allocation`,
:mod:`.selection` and the selectors built on it such as :mod:`.dsnot`, :mod:`.schedules`), the one selection loop
every tensor and every unit of structure goes through (:mod:`.loop`), the fast paths that give the same masks
(:mod:`.topk`, :mod:`.streaming`), what a method returns (:mod:`.decisions`), SparseGPT's reconstruction
(:mod:`.reconstruction`) and the N:M channel-permutation search (:mod:`.permutation`). It knows nothing of
models' structure, methods, training or runs: those build on it.

Plug-ins that register themselves are imported here, in one place, so a registry is complete as soon as its
package is imported.
"""
from . import dsnot  # noqa: F401  registers the "dsnot" selector
