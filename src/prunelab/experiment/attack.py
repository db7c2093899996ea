"""``prunelab attack RUN_DIR``: accuracy of a run's dense and sparse models under FGSM and PGD."""
from __future__ import annotations

from pathlib import Path

from ..analysis.robustness import accuracy_under_attack
from ..errors import ConfigError
from ..io import atomic_write_json


def attack_run(run_dir: str | Path, eps: list[float], attacks: list[str], samples: int | None = 1000,
               steps: int = 10, step_size: float | None = None, dense_run: str | Path | None = None,
               data_root: str | None = None) -> dict:
    """Evaluate the run's final (sparse) model and its dense model under each attack and epsilon.

    The dense model is the run's own dense stage when it was trained, else the final model of
    ``dense_run`` (for sparse training from scratch, give a run of the same recipe with sparsity 0).
    Writes ``attack.json`` in the run folder and returns its content.
    """
    from .finished import load_final, open_finished
    from .paths import DENSE

    ctx = open_finished(run_dir, data_root)
    if ctx.spec.task != "classification":
        raise ConfigError(f"{run_dir} is a {ctx.spec.task} run: adversarial attacks need an image classifier")
    bad = [a for a in attacks if a not in ("fgsm", "pgd")]
    if bad:
        raise ConfigError(f"unknown attack(s) {', '.join(bad)}; valid: fgsm, pgd")
    if any(not 0 <= e <= 1 for e in eps):
        raise ConfigError("epsilons are in pixel space and must be in [0, 1]")
    recipe, data = ctx.recipe, ctx.data
    models = {"sparse": load_final(ctx)[0]}
    if recipe.train.epochs > 0:
        models["dense"] = ctx.build_model(checkpoint=ctx.paths.stage(DENSE))
    elif dense_run is not None:
        models["dense"] = load_final(open_finished(dense_run, data_root))[0]
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
    atomic_write_json(ctx.paths.attack, out)
    return out
