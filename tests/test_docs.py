"""Every fenced python block of the docs and of README.md runs: a page's blocks in order in one namespace, in a
fresh folder, with the registries as they were afterwards (a page may register a part of its own)."""
import re
from pathlib import Path

import pytest
import torch

import prunelab

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_pages_have_python_to_run():
    """The collector finds blocks (a changed fence would otherwise turn every page's test into nothing)."""
    assert len(blocks(ROOT / "docs" / "getting-started.md")) >= 2
    assert sum(len(blocks(p)) for p in PAGES) >= 12


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    """Each block runs without an exception, and each page checks what it shows (an assert in its blocks, which
    then holds): a page whose example stopped doing what its text says fails here."""
    assert any(re.search(r"^\s*assert ", code, re.M) for code in blocks(page)), f"{page.name} checks nothing"
    monkeypatch.chdir(tmp_path)
    registries = [prunelab.CRITERIA, prunelab.GRANULARITIES, prunelab.ALLOCATIONS, prunelab.SELECTORS,
                  prunelab.SCHEDULES, prunelab.METHODS]
    saved = [dict(r._items) for r in registries]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    try:
        for i, code in enumerate(blocks(page)):
            try:
                exec(compile(code, f"{page.name} block {i + 1}", "exec"), namespace)
            except ModuleNotFoundError as exc:  # an optional extra this install lacks
                pytest.skip(f"{page.name} block {i + 1} needs {exc.name}")
    finally:
        torch.set_num_threads(threads)
        for r, items in zip(registries, saved):
            r._items.clear()
            r._items.update(items)


def _reference_gen():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_gen", ROOT / "docs" / "reference_gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_covers_every_command_field_recipe_and_part():
    """What docs/hooks.py puts in the reference pages at build time: every subcommand with each of its options,
    every field of every recipe section, every built-in recipe, every registered part."""
    import argparse

    from prunelab.cli import build_parser
    from prunelab.experiment import schema
    from prunelab.experiment.schema import builtin_recipes

    gen = _reference_gen()
    cli = gen.cli()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## prunelab {name}\n" in cli
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert all(f"`{o}" in cli or f" {o}" in cli for o in action.option_strings), (name, action.dest)
    text = gen.schema()
    for model in (schema.Recipe, schema.DataConfig, schema.PruneConfig, schema.OptimConfig):
        assert f"## {model.__name__}\n" in text
        assert all(f"| `{f}` |" in text for f in model.model_fields), model.__name__
    assert "a local Hugging Face model folder whose tokenizer" in text  # a field's comment is its meaning
    assert all(f"## {name}\n" in gen.recipes() for name in builtin_recipes())
    parts = gen.parts()
    assert all(f"| `{name}` |" in parts for name in prunelab.METHODS.names() + prunelab.CRITERIA.names())
