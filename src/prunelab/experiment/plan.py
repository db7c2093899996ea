"""A run's plan: the stages a recipe makes, in order (dense, one round per pruning event or the gradual stage,
the shrunk model for a channel method, the controls), planned once from the recipe and the engine's schedule."""
from __future__ import annotations

from .context import RunContext
from .controls import Shrunk
from .stages import STAGES, Dense, Stage


def plan(ctx: RunContext) -> list[Stage]:
    """The run's stages, in order, from the recipe and its engine schedule (one round per event)."""
    method = ctx.method
    point = method.rewind_point() if method is not None else None
    stages: list[Stage] = [Dense(rewind_step=point.step if point is not None and point.to == "step" else 0)]
    p = ctx.recipe.prune
    if p is None:
        return stages
    if p.schedule.name == "cubic":
        stages.append(STAGES.build("gradual"))
    else:
        events = len(ctx.schedule.events())  # not cubic: the schedule needs no data
        for i in range(1, events + 1):
            stages.append(STAGES.build({"name": "round", "index": i, "final": i == events,
                                        "source": stages[-1].name}))
    final = stages[-1].name
    if method.channels:
        stages.append(Shrunk(final=final))
    controls = [c for c in dict.fromkeys(p.controls) if c != "finetune"]  # finetune: the pruning stages themselves
    return stages + [STAGES.build({"name": c, "final": final}) for c in controls]


def final_stage(stages: list[Stage]) -> str:
    """The name of the last stage of the dense -> pruned progression (the run's pruned model)."""
    return [s.name for s in stages if s.pruning][-1]
