"""Atomic file writes and safe reads.

Everything prunelab writes goes to a temporary file in the same folder and is renamed over the target,
so a crash never leaves a half-written artifact; what a write may replace is decided by
:mod:`prunelab.outputs` (regular files only, never a folder, link or device). Reads use safetensors and JSON
only: nothing is unpickled, and a read is bounded in size and nesting.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError
from .outputs import _atomic, atomic_write_bytes, atomic_write_text, error_from_safetensors  # noqa: F401 (re-exported)


def atomic_write_safetensors(path: str | Path, tensors: dict[str, Tensor],
                             metadata: dict[str, str] | None = None) -> None:
    """Write the same bytes as :func:`safetensors_bytes`, atomically, without holding the file in memory:
    safetensors' own writer streams the tensors to the temporary file, then its header (the same length
    once put in one order) is rewritten in place."""
    from safetensors.torch import save_file

    def fill(f, tmp: str) -> None:
        f.close()  # safetensors writes the file by name
        try:
            save_file(tensors, tmp, metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a full disk or a file-size limit as its own error type
            os_error = error_from_safetensors(exc, path)
            if os_error is None:
                raise
            raise os_error from None
        with open(tmp, "r+b") as g:
            n = int.from_bytes(g.read(8), "little")
            header = _ordered_header(g.read(n))
            if len(header) != n:  # not expected: the same JSON in another order; then write it whole
                g.seek(0)
                g.truncate()
                g.write(safetensors_bytes(tensors, metadata))
            else:
                g.seek(8)
                g.write(header)
            g.flush()
            os.fsync(g.fileno())

    _atomic(path, fill)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: The largest JSON record prunelab reads (a summary of a model with thousands of layers is a few MB).
MAX_JSON_BYTES = 64 << 20


def read_json(path: str | Path) -> Any:
    """A JSON record prunelab wrote; missing, oversized, non-UTF-8, invalid or absurdly nested files (which
    would exhaust the parser's stack) raise CheckpointError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than any record prunelab writes ({MAX_JSON_BYTES >> 20} MiB)")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt)") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested deeper than any record prunelab writes (damaged)") from None
    except OSError as exc:  # a folder, a link loop, no permission
        raise CheckpointError(f"{path} cannot be read: {exc.strerror}") from None


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load tensors and metadata from a safetensors file; missing or corrupt files raise CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad headers and short files
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__})") from None
    return tensors, meta


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():  # the array itself, through the buffer protocol: no copy (2x faster than tobytes)
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def read_tagged_safetensors(path: str | Path, fmt: str, what: str, key: str) -> tuple[dict[str, Tensor], Any]:
    """Read a prunelab safetensors file whose metadata names format ``fmt`` and holds JSON under ``key``.

    Returns (tensors, the parsed JSON); a wrong format or unreadable JSON raises CheckpointError naming ``what``.
    When the metadata holds a ``sha256`` (see :func:`digest`), the tensors must match it.
    """
    tensors, meta = read_safetensors(path)
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path} is not a prunelab {what} file")
    if "sha256" in meta and digest(tensors) != meta["sha256"]:
        raise CheckpointError(f"{path} does not match its SHA-256 digest: the file was altered or damaged")
    try:
        return tensors, json.loads(meta[key])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path} has no readable {key}") from None


def _ordered_header(raw_header: bytes) -> bytes:
    """A safetensors header with its metadata keys sorted (safetensors writes them in a random order) and the
    tensor entries in safetensors' own deterministic order, padded with spaces to a multiple of 8 bytes."""
    header = json.loads(raw_header)
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as safetensors writes it


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save``, with the header written in one order: safetensors writes its metadata map in
    a random order, so equal content would give different bytes (and different digests) from run to run. The
    header is re-serialised with the metadata keys sorted and the tensors in safetensors' own (deterministic)
    order; data offsets are relative to the data section, so they are unchanged."""
    from safetensors.torch import save as st_save

    raw = st_save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    text = _ordered_header(raw[8:8 + n])
    return b"".join((len(text).to_bytes(8, "little"), text, memoryview(raw)[8 + n:]))  # one copy of the data


def _state_tensors(state: dict[str, Tensor], metadata: dict[str, str] | None) -> tuple[dict, dict]:
    """A state_dict's tensors with tied ones once, and the metadata naming the aliases (see state_bytes)."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for k, v in state.items():
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype) if v.numel() else ("empty", k)
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            tensors[k] = v.detach().cpu().contiguous()
    meta = dict(metadata or {})
    if aliases:
        meta["aliases"] = json.dumps(aliases, sort_keys=True)
    return tensors, meta


def state_bytes(state: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of a state_dict with tied tensors stored once: a key whose tensor is a view of the
    same memory as an earlier key's (a language model's output layer tied to its embedding) is left out and
    named in the metadata entry ``aliases`` (JSON {alias: stored key}), as safetensors' own ``save_model`` does.
    :func:`read_state` puts the aliases back."""
    return safetensors_bytes(*_state_tensors(state, metadata))


def write_state(path: str | Path, state: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """:func:`state_bytes` written atomically, streamed to the file (no copy of the model in memory)."""
    atomic_write_safetensors(path, *_state_tensors(state, metadata))


def read_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(state_dict, metadata) written by :func:`state_bytes`: tied keys restored as the same tensor."""
    tensors, meta = read_safetensors(path)
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
        for alias, key in aliases.items():
            tensors[alias] = tensors[key]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path} has a damaged alias table") from None
    return tensors, meta
