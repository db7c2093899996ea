"""Checkpoints: weights (safetensors), masks, optimizer state and RNG states, written atomically.

Layout of a checkpoint folder (file names in :mod:`prunelab.experiment.paths`): the model's weights (its own
state_dict keys), the masks, the optimizer state, the method's state (only for methods that carry state between
events, e.g. DropPruning's record of revived weights), the torch RNG state, and a JSON file with the tensors'
companions (optimizer hyper-parameters, pruner counters, Python and NumPy RNG states, anything the stage adds).
The JSON file is written last and lists the SHA-256 and size of every other file of the folder: a folder
without it is incomplete and is ignored; one whose files no longer match it is damaged
(:func:`verify_checkpoint`). Nothing is ever unpickled.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..io import (atomic_write_json, atomic_write_safetensors, file_sha256, read_json, read_safetensors, read_state,
                  write_state)
from ..masks import Masks
from .paths import MASKS, METHOD_STATE, METRICS, MODEL, OPTIMIZER, RNG, STATE
from .records import StateRecord, read_record


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The random-number states to resume with: torch's CPU generator, each CUDA device's once CUDA is in use
    (``cuda/<index>``), Python's and NumPy's."""
    np_state = np.random.get_state()
    py = random.getstate()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return (tensors,
            {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]})


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states. CUDA states restore onto the devices this process has; a GPU
    checkpoint resumed on the CPU leaves them (there is no CUDA generator to continue), and a CPU checkpoint
    on a GPU has none to restore."""
    torch.set_rng_state(tensors["torch"])
    cuda = {int(k.split("/", 1)[1]): v for k, v in tensors.items() if k.startswith("cuda/")}
    if cuda and torch.cuda.is_available():
        for i, state in cuda.items():
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(state, i)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(folder: str | Path, model: nn.Module | dict, masks: Masks | None = None,
                    optimizer: torch.optim.Optimizer | dict | None = None, extra: dict | None = None,
                    method_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint; ``extra`` (JSON-serialisable) lands in the state file, ``method_state`` (the pruning
    method's :meth:`~prunelab.methods.Method.state_tensors`) in its own file. ``model`` and ``optimizer`` may be
    given as their state dicts (a sharded model's, gathered by :func:`prunelab.training.parallel.full_state`)."""
    folder = Path(folder)
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    write_state(folder / MODEL, weights, {"format": "prunelab.model/1"})  # streamed, no copy
    if masks is not None:
        masks.save(folder / MASKS)
    if method_state:
        atomic_write_safetensors(folder / METHOD_STATE,
                                 {k: v.detach().contiguous().cpu() for k, v in method_state.items()},
                                 {"format": "prunelab.method_state/1"})
    opt_meta = None
    if optimizer is not None:
        osd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        tensors, scalars = {}, {}
        for idx, st in osd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{idx}/{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        atomic_write_safetensors(folder / OPTIMIZER, tensors)
        opt_meta = {"param_groups": osd["param_groups"], "scalars": scalars}
    rng_t, rng_meta = rng_state()
    atomic_write_safetensors(folder / RNG, rng_t)
    atomic_write_json(folder / STATE, {"optimizer": opt_meta, "rng": rng_meta, **(extra or {}),
                                       "files": file_digests(folder)})


def file_digests(folder: str | Path) -> dict[str, dict]:
    """SHA-256 and size of every file of a checkpoint folder (what the stage wrote there, a shrunk model
    included), read back from disk; the state file and the training log are not listed."""
    return {name: {"sha256": file_sha256(Path(folder) / name), "bytes": (Path(folder) / name).stat().st_size}
            for name in file_names(folder)}


def file_names(folder: str | Path) -> list[str]:
    """The files of a checkpoint folder its state file lists: all but the state file, the log and hidden ones."""
    return [f.name for f in sorted(Path(folder).iterdir())
            if f.is_file() and f.name not in (STATE, METRICS) and not f.name.startswith(".")]


def verify_checkpoint(folder: str | Path) -> list[str]:
    """What is wrong with a checkpoint folder, one phrase per problem ([] when intact): a state file that is
    missing or malformed, without its list of files, a listed file missing, of another size or with another
    SHA-256, or a checkpoint file present but not listed."""
    folder = Path(folder)
    if not (folder / STATE).is_file():
        return [f"{STATE} is missing (the stage did not finish)"]
    try:
        files = read_record(StateRecord, folder / STATE).get("files")
    except CheckpointError as exc:
        return [str(exc)]
    if files is None:  # every checkpoint lists its files: a state file without the list is damage, not a pass
        return [f"{STATE} lists no files, so nothing it describes can be checked (edited or damaged)"]
    outside = [name for name in files if Path(name).name != name or name in (".", "..")]
    if outside:  # a list edited to point elsewhere: nothing outside the folder is ever read
        return [f"{STATE} lists a file outside its folder ({outside[0]!r}): edited or damaged"]
    problems = [f"{name} is not covered by {STATE} (its list of files was edited)"
                for name in (MODEL, RNG) if name not in files]
    problems += [f"{name} is in the folder but not in {STATE}'s list of files"
                 for name in file_names(folder) if name not in files]
    for name, d in files.items():
        f = folder / name
        if not f.is_file():
            problems.append(f"{name} is missing")
        elif f.stat().st_size != d["bytes"]:
            problems.append(f"{name} has {f.stat().st_size:,} bytes where {d['bytes']:,} were written")
        elif file_sha256(f) != d["sha256"]:
            problems.append(f"{name} is damaged (its SHA-256 differs from the one recorded when it was written)")
    return problems


def load_method_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The pruning method's tensors saved with a checkpoint ({} when it kept none)."""
    path = Path(folder) / METHOD_STATE
    if not path.is_file():
        return {}
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "prunelab.method_state/1":
        raise CheckpointError(f"{path} is not a prunelab method state file")
    return tensors


def _adopt_biases(model: nn.Module, extra: set[str]) -> bool:
    """Whether ``model`` gained the biases FLAP's compensation gave the checkpoint's (``extra``: its keys the
    model lacks; :func:`prunelab.structure.bias.adopt_biases`): a model rebuilt from the recipe meets them."""
    from ..structure import family_of
    from ..structure.bias import adopt_biases

    fam = family_of(model) if all(n.endswith(".bias") for n in extra) else None
    return fam is not None and bool(adopt_biases(model, fam, extra))


def load_checkpoint(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> tuple[Masks | None, dict]:
    """Load weights (and optimizer state, RNG states) into the given objects; returns (masks, state dict)."""
    folder = Path(folder)
    state = read_json(folder / STATE)
    tensors, _ = read_state(folder / MODEL)
    own = model.state_dict()
    if set(tensors) - set(own) and _adopt_biases(model, set(tensors) - set(own)):
        own = model.state_dict()
    if set(tensors) != set(own):
        diff = sorted(set(tensors) ^ set(own))[:3]
        raise CheckpointError(f"{folder} holds weights of another model (keys differ: {', '.join(diff)})")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{folder}: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
    model.load_state_dict(tensors)
    masks = Masks.load(folder / MASKS) if (folder / MASKS).is_file() else None
    if optimizer is not None and state.get("optimizer"):
        opt_t, _ = read_safetensors(folder / OPTIMIZER)
        meta = state["optimizer"]
        st: dict[int, dict] = {}
        for key, v in opt_t.items():
            idx, name = key.split("/", 1)
            st.setdefault(int(idx), {})[name] = v
        for idx, sc in meta["scalars"].items():
            st.setdefault(int(idx), {}).update(sc)
        try:
            optimizer.load_state_dict({"state": st, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{folder}: optimizer state does not fit ({exc})") from None
    if restore_rng:
        rng_t, _ = read_safetensors(folder / RNG)
        try:
            set_rng_state(rng_t, state["rng"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError):  # the record was edited or damaged
            raise CheckpointError(f"{folder / STATE} has a damaged random-number state; delete {folder} and rerun "
                                  "to recompute it") from None
    return masks, state
