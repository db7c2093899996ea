"""``prunelab attack RUN_DIR``: accuracy of a run's dense and sparse models under FGSM and PGD."""
from __future__ import annotations

from pathlib import Path

from .analysis.robustness import accuracy_under_attack
from .errors import CheckpointError, ConfigError
from .io import atomic_write_json


def attack_run(run_dir: str | Path, eps: list[float], attacks: list[str], samples: int | None = 1000,
               steps: int = 10, step_size: float | None = None, dense_run: str | Path | None = None) -> dict:
    """Evaluate the run's final (sparse) model and its dense model under each attack and epsilon.

    The dense model is the run's own dense stage when it was trained, else the final model of
    ``dense_run`` (for sparse training from scratch, give a run of the same recipe with sparsity 0).
    Writes ``attack.json`` in the run folder and returns its content.
    """
    from .experiment import Runner, load_recipe

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no recipe.yaml)")
    if not (run_dir / "summary.json").is_file():
        raise CheckpointError(f"{run_dir} has not finished (no summary.json); rerun it first")
    bad = [a for a in attacks if a not in ("fgsm", "pgd")]
    if bad:
        raise ConfigError(f"unknown attack(s) {', '.join(bad)}; valid: fgsm, pgd")
    if any(not 0 <= e <= 1 for e in eps):
        raise ConfigError("epsilons are in pixel space and must be in [0, 1]")
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    runner = Runner(recipe, run_dir, progress=False, log=lambda m: None)
    data = runner._data()
    models = {"sparse": _load(runner, run_dir / "stages" / runner.prune_stages()[-1])}
    if recipe.train.epochs > 0:
        models["dense"] = _load(runner, run_dir / "stages" / "dense")
    elif dense_run is not None:
        other = Runner(load_recipe(str(Path(dense_run) / "recipe.yaml")), dense_run, progress=False, log=print)
        models["dense"] = _load(other, Path(dense_run) / "stages" / other.prune_stages()[-1])
    results = []
    for label, model in models.items():
        row = {"model": label, "clean": accuracy_under_attack(model, data.test, "none", 0.0, data.mean, data.std,
                                                               samples, device=recipe.device)}
        for a in attacks:
            for e in eps:
                row[f"{a}@{e:g}"] = accuracy_under_attack(model, data.test, a, e, data.mean, data.std, samples,
                                                          steps, step_size, seed=recipe.seed, device=recipe.device)
        results.append(row)
    out = {"samples": samples, "steps": steps, "step_size": step_size, "results": results}
    atomic_write_json(run_dir / "attack.json", out)
    return out


def _load(runner, folder: Path):
    from .experiment.checkpoint import load_checkpoint

    model = runner._model()
    load_checkpoint(folder, model, restore_rng=False)
    return model
