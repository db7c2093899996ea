"""Calibration from disk: a Hugging Face model larger than host memory, pruned block by block from its files.

:func:`open_on_disk` has transformers build the model with every weight offloaded to disk (``device_map={"":
"disk"}``, through accelerate): parameters on the ``meta`` device (no memory), buffers real, and accelerate's
``OffloadedWeightsLoader`` indexing where each weight lies in the folder's own safetensors shards (no copy;
weights transformers converts on load, such as per-expert tensors fused, are written once to an offload
folder). accelerate's forward hooks, which would read every weight back from the files at every call, are
removed: the calibration pipeline moves weights itself, and a :class:`DiskWeights` is its disk tier.

Reading a module's weights is ``onload`` (read from the index, swapped into the same Parameter objects, so the
Pruner's references stay valid); ``offload`` writes the weights of the modules it is given to one safetensors
file of the output folder when they changed (a block after its decision), points the index at that file and
returns them to ``meta``. Later reads of a block (a full pass for targets after the blocks) therefore see the
pruned weights. :meth:`DiskWeights.finish` copies every weight never changed, module by module, and writes the
index transformers loads (``model.safetensors.index.json``), the config and the folder's tokenizer files.

What stays in memory: the pruner's masks (one byte per prunable weight; weights on disk are never all loaded),
one block's weights and statistics, the cached block inputs, the modules outside the blocks (embeddings).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError, first_line
from ..io import atomic_write_safetensors, atomic_write_text

INDEX = "model.safetensors.index.json"
#: files of a model folder copied as they are (tokenizer, generation settings); the weights and config are new
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
          "merges.txt", "generation_config.json", "chat_template.jinja")


def open_on_disk(folder: str | Path, out: str | Path, dtype: torch.dtype | None = None
                 ) -> tuple[nn.Module, "DiskWeights"]:
    """(the model of ``folder`` with its weights on disk, its :class:`DiskWeights` writing to ``out``).

    ``out`` must not exist or be an empty folder; ``dtype``: the weights' dtype in memory (default: the
    checkpoint's). ConfigError in one sentence when accelerate is missing or the folder is not a model."""
    try:
        import transformers
        from accelerate.hooks import remove_hook_from_module
    except ImportError:
        raise ConfigError("calibration from disk needs transformers and accelerate: pip install "
                          "'prunelab[disk]'") from None
    from ..models.folder import check_folder, read_config

    folder, out = Path(folder), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder: the pruned model is written to a new one")
    read_config(folder)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    check_folder(transformers, folder, fit_memory=False, **kwargs)
    transformers.logging.set_verbosity_error()  # its advice and progress bars would bury prunelab's own lines,
    transformers.utils.logging.disable_progress_bar()  # as models.hf does; and accelerate's note that the
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)  # weights are on disk is the point
    staging = Path(tempfile.mkdtemp(prefix=".offload-", dir=out.parent if out.parent.exists() else None))
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), device_map={"": "disk"}, offload_folder=str(staging), local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"transformers cannot open {folder} with its weights on disk: {first_line(exc, 200)}") from None
    maps = (getattr(getattr(m, "_hf_hook", None), "weights_map", None) for m in model.modules())
    loader = next((getattr(w, "dataset", None) for w in maps if w is not None), None)
    if loader is None or not hasattr(loader, "index"):
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"transformers kept {folder}'s weights in memory instead of on disk; prune it in memory")
    remove_hook_from_module(model, recurse=True)
    try:
        disk = DiskWeights(model, loader, folder, out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _return_freed_memory()
    return model, disk


#: allocations from their own mappings above this (glibc's M_MMAP_THRESHOLD); measured on the benchmark below,
#: private memory / time of SparseGPT: 128 KiB 276 MiB / 50.9 s, 1 MiB 285 MiB / 39.9 s, 4 MiB 310 MiB / 38.6 s
#: (every mapping is fresh pages to fault in: the smaller the threshold, the more of them)
THRESHOLD = 1 << 20


def _return_freed_memory() -> None:
    """Have glibc serve allocations over :data:`THRESHOLD` from their own mappings, returned when freed.

    By default glibc raises that threshold (to 32 MiB) after the first large free, and a block's weights, read
    and freed once per block, then stay in its heap as free but resident fragments: measured on an 8 x 1024
    LLaMA (424 MiB, Wanda), +50 MiB per block, 1.41x the model above the imports; with this, 0.43x, the masks'
    growth alone (benchmarks/calibrate_from_disk.py). The setting is process-wide (what
    MALLOC_MMAP_THRESHOLD_ does at start-up); nothing happens where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, THRESHOLD)  # M_MMAP_THRESHOLD
    except OSError:
        pass


class DiskWeights:
    """The disk tier of a model opened by :func:`open_on_disk` (see the module docstring)."""

    def __init__(self, model: nn.Module, loader, source: Path, out: Path, staging: Path | None = None) -> None:
        self.model, self.loader, self.source, self.out, self.staging = model, loader, source, out, staging
        self.names = {id(p): n for n, p in model.named_parameters()}
        self._modules = {id(m): n or "model" for n, m in model.named_modules()}
        self.files: dict[str, str] = {}  # parameter name -> the output file holding its final value
        self.extra: set[str] = set()  # the other files written to the output folder (config, tokenizer)
        self.made_out = False  # whether this tier made the output folder (an empty one given is the user's)
        self._read: dict[int, int] = {}  # id(parameter) -> its version when read (a write shows as another)
        missing = [n for n in self.names.values() if n not in loader.index and n not in loader.state_dict]
        if missing:
            raise ConfigError(f"{source}'s weights on disk lack {missing[0]}: prune this model in memory")

    def name(self, module: nn.Module) -> str:
        """``module``'s name in the model (the file its weights are written to)."""
        return self._modules[id(module)]

    def onload(self, modules: Iterable[nn.Module], device: torch.device) -> None:
        """The modules' own parameters read from disk onto ``device`` (the Parameter objects kept)."""
        for m in modules:
            for p in m._parameters.values():
                if p is not None and p.is_meta:
                    value = self.loader[self.names[id(p)]].to(device=device, dtype=p.dtype)
                    torch.utils.swap_tensors(p, nn.Parameter(value, requires_grad=p.requires_grad))
                    self._read[id(p)] = p._version

    def offload(self, modules: Iterable[nn.Module], file: str, force: bool = False) -> None:
        """The modules' own parameters back to ``meta``; when any was written since it was read (or ``force``),
        all of them saved first to ``file`` in the output folder, which the index then reads them from."""
        params = [p for m in modules for p in m._parameters.values() if p is not None and not p.is_meta]
        if force or any(p._version != self._read.get(id(p)) for p in params):
            tensors = {self.names[id(p)]: p.detach().cpu().contiguous() for p in params}
            if not self.out.exists():
                self.out.mkdir(parents=True)
                self.made_out = True
            target = self.out / f"weights-{file}.safetensors"  # not model.safetensors: transformers would read it alone
            atomic_write_safetensors(target, tensors, {"format": "pt"})
            for name, t in tensors.items():
                self.loader.index[name] = {"safetensors_file": str(target), "weight_name": name,
                                           "dtype": str(t.dtype).removeprefix("torch.")}
                self.files[name] = target.name
        for p in params:
            self._read.pop(id(p), None)
            torch.utils.swap_tensors(p, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                     requires_grad=p.requires_grad))

    def finish(self) -> Path:
        """Complete the output folder: every weight not written yet copied (a group at a time: one decoder layer,
        or what sits outside the layers under one top-level name), the index, the config and the source's
        tokenizer files; returns the folder."""
        groups: dict[str, list[nn.Module]] = {}
        seen: set[int] = set()  # a tied weight (lm_head = embeddings) is copied once, under its first name
        for name, m in self.model.named_modules():
            own = [p for p in m._parameters.values() if p is not None and id(p) not in seen]
            seen.update(id(p) for p in own)
            if any(self.names[id(p)] not in self.files for p in own):
                groups.setdefault(_group(name), []).append(m)
        for group, mods in groups.items():
            self.onload(mods, torch.device("cpu"))
            self.offload(mods, group if f"weights-{group}.safetensors" not in self.files.values() else f"{group}-rest",
                         force=True)
        weight_map = {n: self.files[n] for n in self.names.values()}
        total = sum((self.out / f).stat().st_size for f in set(weight_map.values()))
        self.model.config.save_pretrained(str(self.out))
        self.extra.add("config.json")
        for name in COPIED:
            if (self.source / name).is_file():
                shutil.copyfile(self.source / name, self.out / name)
                self.extra.add(name)
        atomic_write_text(self.out / INDEX, json.dumps({"metadata": {"total_size": total},
                                                        "weight_map": weight_map}, indent=1))
        self.close()
        return self.out

    def __enter__(self) -> "DiskWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch folder transformers wrote converted weights to (made by :func:`open_on_disk` with
        ``mkdtemp`` for this model alone)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def discard(self) -> None:
        """Delete what this tier wrote to the output folder (a run that failed half way), file by file, and the
        folder if this tier made it and that leaves it empty; nothing else is touched."""
        for name in set(self.files.values()) | self.extra | {INDEX}:
            (self.out / name).unlink(missing_ok=True)
        if self.made_out:
            try:
                self.out.rmdir()
            except OSError:  # someone else's file arrived meanwhile: the folder stays
                pass
        self.close()


def _group(name: str) -> str:
    """The file a module's weights are copied to: its name up to its first index (``model.layers.3``), else its
    top-level name (``model``: the embeddings and final norm; ``lm_head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return parts[0] or "model"
