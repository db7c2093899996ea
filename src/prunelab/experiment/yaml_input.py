"""The input boundary of recipes: YAML read safely, bounded, and without silent surprises.

PyYAML's ``safe_load`` already refuses tags that build objects, but it happily expands an alias bomb (a few
hundred bytes that become billions of nodes once pydantic or the hash walk them), recurses until the stack is
gone on deep nesting, and keeps the last of two equal keys. Here:

- a recipe file is at most :data:`MAX_BYTES` and must be UTF-8 text (a BOM is allowed);
- the document, with every alias expanded, has at most :data:`MAX_NODES` nodes and :data:`MAX_DEPTH` levels
  (anchors and aliases themselves are fine: recipes may share a block), and no alias may contain itself;
- a key given twice in one mapping is an error naming it and both lines.

Every refusal is a ConfigError naming the file (or the override) and the line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

MAX_BYTES = 1 << 20   # the largest built-in recipe is under 2 kB
MAX_NODES = 100_000   # after alias expansion; a recipe has a few hundred
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # merge keys (<<) first, so that an explicit key overrides a merged one
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeConstructor says so below
            continue
        if first is not None:
            raise ConfigError(f"key {key!r} is given twice (lines {first.start_mark.line + 1} and "
                              f"{key_node.start_mark.line + 1}); keep one")
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _check_size(root: yaml.Node) -> None:
    """ConfigError when the document, aliases expanded, is too large or deep, or an alias contains itself.
    Iterative (no recursion) and memoised per node, so the check itself costs the size of the text."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = _children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise ConfigError(f"the YAML expands to more than {MAX_NODES:,} values (line {node.start_mark.line + 1}"
                                  "): aliases repeated inside aliases? write the values out")
            if depth[key] > MAX_DEPTH:
                raise ConfigError(f"the YAML is nested more than {MAX_DEPTH} levels deep "
                                  f"(line {node.start_mark.line + 1})")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"the YAML has an alias that contains itself (line {node.start_mark.line + 1})")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """The value of a YAML document under the rules above; ``where`` names it in errors (``recipe x.yaml``)."""
    loader = None
    try:
        loader = _Loader(text)  # reads ahead: an unacceptable character is found here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{line}") from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise ConfigError(f"{where}: the YAML is nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, what: str = "recipe") -> Any:
    """A YAML file's value: at most :data:`MAX_BYTES`, UTF-8, parsed by :func:`parse_yaml`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist" if not path.exists() else
                              f"{what} {path} is not a file")
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{what} {path} is {path.stat().st_size:,} bytes; a recipe is at most "
                              f"{MAX_BYTES:,} (is it the right file?)")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_yaml(text, f"{what} {path}")
