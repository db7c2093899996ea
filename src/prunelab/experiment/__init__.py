"""Recipes, runs and stages: the schema (:mod:`.schema`), a run's plan (:mod:`.plan`) and its stages
(:mod:`.stages`, :mod:`.controls`), the runner that resumes a run folder (:mod:`.runner`, :mod:`.paths`,
:mod:`.checkpoint`), the one way to open a finished run (:mod:`.finished`, checked by :mod:`.verify`), and the
commands that read finished runs (:mod:`.export_run`, :mod:`.attack`, :mod:`.compare`, :mod:`.curve`)."""
from .context import RunContext
from .finished import load_final, open_finished
from .plan import final_stage, plan
from .runner import Runner, load_summary, run_dir_for, trained_dense
from .schema import Recipe, builtin_recipes, load_recipe

__all__ = ["Recipe", "RunContext", "Runner", "builtin_recipes", "final_stage", "load_final", "load_recipe", "load_summary", "open_finished", "plan",
           "run_dir_for", "trained_dense"]
