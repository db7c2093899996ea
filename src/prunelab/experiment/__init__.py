"""Recipes, runs and stages."""
from .context import RunContext
from .runner import Runner, final_stage, load_final, load_summary, plan, run_dir_for, trained_dense
from .schema import Recipe, builtin_recipes, load_recipe

__all__ = ["Recipe", "RunContext", "Runner", "builtin_recipes", "final_stage", "load_final", "load_recipe", "load_summary", "plan",
           "run_dir_for", "trained_dense"]
