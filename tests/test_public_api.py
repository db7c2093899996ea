"""Every public name README.md and the docs show resolves where it says, and the top-level names are the documented
ones."""
import importlib
import re
from pathlib import Path

import pytest

import prunelab

ROOT = Path(__file__).resolve().parent.parent
TEXT = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])
# dotted names in code spans and code blocks; "prunelab.masks/1"-style format tags are not names
NAMES = sorted(set(re.findall(r"\bprunelab(?:\.[A-Za-z_]\w*)+(?![\w/-])", TEXT)))


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_readme_names_something():
    assert "prunelab.Pruner" in NAMES and "prunelab.export.shrink" in NAMES and len(NAMES) > 15


@pytest.mark.parametrize("dotted", NAMES)
def test_every_name_the_readme_shows_resolves(dotted):
    assert _resolve(dotted) is not None


def test_the_top_level_names_are_there_and_documented():
    for name in prunelab.__all__:
        assert getattr(prunelab, name) is not None, name
    assert prunelab.export.shrink is _resolve("prunelab.structure.surgery.shrink")
    from prunelab.export.shrink import load_shrunk, shrink  # the old module path still imports
    assert callable(shrink) and callable(load_shrunk)
