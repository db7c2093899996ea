"""MkDocs hook: fills the generated reference pages (``<!-- prunelab:NAME -->``, see ``reference_gen.py``) and the
benchmark tables page from ``benchmarks/results``, at build time, so the reference cannot fall behind the code."""
from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reference_gen  # noqa: E402

MARKER = re.compile(r"<!-- prunelab:(\w+) -->")


def benchmarks() -> str:
    """Every table in ``benchmarks/results``, headings moved one level down, under its file name."""
    out = []
    for f in sorted((HERE.parent / "benchmarks" / "results").glob("*.md")):
        text = f.read_text(encoding="utf-8")
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
        text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # figures stay beside their tables in the repository
        out.append(f"## {f.stem}\n\n`benchmarks/results/{f.name}`\n\n{text}\n")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def fill(m: re.Match) -> str:
        name = m.group(1)
        return benchmarks() if name == "benchmarks" else reference_gen.generate(name)
    return MARKER.sub(fill, markdown)
