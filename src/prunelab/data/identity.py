"""What a data set *is*, independent of where it was found: the identity a run records and checks on resume.

A run is named by its recipe without the data root (the same files under another path, or a relative root
seen from another folder, are the same run). What keeps that honest is this record, taken when the dense model
is trained and compared whenever a run continues: the data set's name and the sizes of the files its loader
reads (sizes, not digests: reading 100 MB of MNIST on every resume would cost more than the check is worth, and
every damage seen so far, a truncated download, another release, a zeroed file, changes a size or is caught by
the loader). Data sets that ship with a package are identified by its version.
"""
from __future__ import annotations

import platform
from pathlib import Path

from .datasets import FASHION_DEBIAN, resolve_root

_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
            "cifar100": "cifar-100-python"}


def _sizes(folder: Path) -> dict[str, int]:
    if not folder.is_dir():
        return {}
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")}


def identity(name: str, root: str | None = None, tokenizer: str | None = None) -> dict:
    """{"name", "files": {file: bytes}} of the files the loader reads, or {"name", "version"} for data that ships
    with a package; ImageNet by its number of class folders per split (listing a million files is not cheap)."""
    base = resolve_root(root)
    out: dict = {"name": name}
    if name in _FOLDERS:
        files = _sizes(base / _FOLDERS[name])
        if not files and name == "fashion_mnist":
            files = _sizes(FASHION_DEBIAN)
        out["files"] = files
    elif name == "imagenet":
        out["classes"] = {s: sum(1 for d in (base / "imagenet" / s).iterdir() if d.is_dir())
                          if (base / "imagenet" / s).is_dir() else 0 for s in ("train", "val")}
    elif name == "digits":
        import sklearn

        out["version"] = f"scikit-learn {sklearn.__version__}"
    elif name == "pystdlib":
        out["version"] = f"Python {platform.python_version()}"
    if tokenizer:
        out["tokenizer"] = _sizes(Path(tokenizer).expanduser())
    return out


def difference(recorded: dict, current: dict) -> str | None:
    """The first way ``current`` is not the data ``recorded`` describes, in words (None when they agree)."""
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if a.get(f) != b.get(f):
                    was = f"{a[f]:,} bytes" if f in a else "absent"
                    now = f"{b[f]:,} bytes" if f in b else "missing"
                    return f"{key} {f}: {now}, {was} when the run trained"
        return f"{key}: {b} now, {a} when the run trained"
    return None
