"""The generated reference pages: the CLI from its parser, the recipe schema from its pydantic models, every
built-in recipe, every registered part. Each function returns Markdown; ``docs/hooks.py`` puts it where a page
says ``<!-- prunelab:NAME -->``, and ``tests/test_docs.py`` checks what they cover."""
from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
import typing

MARKERS = ("cli", "schema", "recipes", "parts")


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cli() -> str:
    """Every ``prunelab`` subcommand: its help, usage and arguments, from the parser itself."""
    from prunelab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = [f"`prunelab` has {len(sub.choices)} commands; `prunelab COMMAND --help` prints the same.\n"]
    for name, p in sub.choices.items():
        out.append(f"## prunelab {name}\n\n{_cell(helps.get(name) or '')}\n")
        out.append("```text\n" + p.format_usage().strip() + "\n```\n")
        rows = []
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flag = ", ".join(a.option_strings) or a.dest
            default = "" if a.default in (None, argparse.SUPPRESS) or a.option_strings == [] else f"`{a.default}`"
            choices = ", ".join(map(str, a.choices)) if a.choices else ""
            rows.append(f"| `{flag}` | {_cell(a.help or '')} | {default} | {_cell(choices)} |")
        if rows:
            out.append("| argument | what | default | choices |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def _comments(cls: type) -> dict[str, str]:
    """{field: the comment on its line} of a class's source (the schema documents its fields in comments)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    out = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.end_lineno - 1]
            if "#" in line:
                out[node.target.id] = line.split("#", 1)[1].strip()
    return out


def _type(annotation: object) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def schema() -> str:
    """Every section of a recipe: its fields, types, defaults, bounds and what they mean, from the models."""
    from pydantic import BaseModel

    from prunelab.experiment import schema as s

    models = [m for _, m in inspect.getmembers(s, inspect.isclass)
              if issubclass(m, BaseModel) and m.__module__.startswith("prunelab.") and not m.__name__.startswith("_")]
    order = ["Recipe", "DataConfig", "ModelConfig", "OptimConfig", "PruneConfig", "ScheduleConfig",
             "CalibrationConfig", "DistillConfig"]
    models.sort(key=lambda m: (order.index(m.__name__) if m.__name__ in order else len(order), m.__name__))
    out = ["A recipe is YAML validated by these models (`prunelab.experiment.schema`); an unknown key, a value "
           "out of bounds or of the wrong type is one sentence naming it. Overrides on the command line use the "
           "same names: `prunelab run RECIPE train.epochs=3 prune.sparsity=0.9`.\n"]
    for m in models:
        doc = inspect.getdoc(m) or ""
        doc = "" if doc.startswith("!!! abstract") or m.__doc__ is None else doc.split("\n\n")[0]
        out.append(f"## {m.__name__}\n\n{_cell(doc)}\n")
        notes = _comments(m)
        rows = []
        for name, f in m.model_fields.items():
            if f.default_factory is not None:
                default = f"a default {_type(f.annotation)}" if isinstance(f.default_factory, type) else "`{}`"
            else:
                default = f"`{f.default!r}`"
            bounds = ", ".join(f"{k} {getattr(c, k)}" for c in f.metadata for k in ("ge", "gt", "le", "lt",
                                                                                   "max_length")
                               if getattr(c, k, None) is not None)
            rows.append(f"| `{name}` | `{_cell(_type(f.annotation))}` | {_cell(default)} | {_cell(bounds)} | "
                        f"{_cell(notes.get(name, ''))} |")
        out.append("| field | type | default | bounds | meaning |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def recipes() -> str:
    """Every built-in recipe, its description and its YAML."""
    from prunelab.experiment.schema import builtin_recipes

    out = ["`prunelab recipes` lists them; `prunelab run NAME` runs one (`prunelab run` alone: `quickstart`).\n"]
    for name, path in sorted(builtin_recipes().items()):
        text = path.read_text(encoding="utf-8")
        out.append(f"## {name}\n\n```yaml\n{text.rstrip()}\n```\n")
    return "\n".join(out)


def parts() -> str:
    """Every registered part by registry: its name and the first line of its docstring."""
    import prunelab

    out = ["Every name below can be given where a part is asked for (`method: {name: ..., criterion: ...}`); "
           "a part of your own joins its registry ([Add a criterion, a method or a unit kind]"
           "(../how-to/extend.md)).\n"]
    for title, reg in (("Methods", prunelab.METHODS), ("Criteria", prunelab.CRITERIA),
                       ("Granularities", prunelab.GRANULARITIES), ("Allocations", prunelab.ALLOCATIONS),
                       ("Selectors", prunelab.SELECTORS), ("Schedules", prunelab.SCHEDULES)):
        rows = []
        for name in reg.names():
            doc = (inspect.getdoc(reg.get(name)) or "").split("\n\n")[0]
            rows.append(f"| `{name}` | {_cell(doc)} |")
        out.append(f"## {title}\n\n| name | what it is |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def generate(marker: str) -> str:
    return {"cli": cli, "schema": schema, "recipes": recipes, "parts": parts}[marker]()
