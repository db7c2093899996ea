"""Recipes, runs and stages."""
from .runner import Runner, load_summary, run_dir_for
from .schema import Recipe, builtin_recipes, load_recipe

__all__ = ["Recipe", "Runner", "builtin_recipes", "load_recipe", "load_summary", "run_dir_for"]
