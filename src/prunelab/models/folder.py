"""The input boundary for model folders (``hf:/folder``): a folder is checked before anything is built from it.

A model folder is data someone else wrote. Before transformers builds anything from it, :func:`check_folder`
proves it describes a model this machine can hold and that its weights can fill:

- ``config.json`` is a JSON object of at most 4 MiB, read by ``json`` (transformers' own parser follows);
- weights are safetensors files (their headers read, their tensors counted: a bad header is one sentence) or,
  only where no safetensors file exists, PyTorch pickles that transformers reads with ``torch.load(...,
  weights_only=True)``: a pickle holding anything but tensors is refused and nothing in it runs. Code in the
  folder (``auto_map``) is never run: ``trust_remote_code`` stays off;
- the model the config describes is built on the ``meta`` device (no memory; 1.8 s for a 600-trillion-parameter
  config of 1,000 layers) and counted: it must fit this machine's memory, and its parameters must be in the
  safetensors files (a config far larger than its weights, an empty weights file: refused, since transformers
  would fill every missing weight with random values and say nothing at the verbosity prunelab runs it at).

After loading, :func:`check_loaded` refuses a model with any weight missing from the files, for the same reason.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError, first_line

#: config.json larger than this is not a model configuration (the largest in transformers' tests is ~60 KB).
MAX_CONFIG_BYTES = 4 << 20
#: More layers than any published model by 6x (the deepest decoders of 2026 have ~160): a config asking for a
#: million would take minutes to build even on the meta device (1,000 layers: 1.8 s).
MAX_LAYERS = 1024
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, or one sentence saying why it is not a model configuration."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder (no config.json)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes: not a model configuration "
                          f"(at most {MAX_CONFIG_BYTES:,})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({first_line(exc, 120)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a JSON {type(config).__name__}, not an object of settings")
    for key in _LAYER_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not 0 <= value <= MAX_LAYERS:
            raise ConfigError(f"{path}: {key} {value} is outside 0-{MAX_LAYERS}")
    return config


def weight_elements(folder: Path) -> tuple[int | None, list[Path]]:
    """(how many tensor elements the folder's safetensors files hold, the weight files); the count is None
    when the weights are pickles only (their content is not known without unpickling them)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(folder.glob("pytorch_model*.bin"))
        if not pickles:
            raise ConfigError(f"{folder} holds no weights (no *.safetensors, no pytorch_model*.bin)")
        return None, pickles
    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    n = 1
                    for d in st.get_slice(key).get_shape():
                        n *= int(d)
                    total += n
        except Exception as exc:  # safetensors raises its own error type for bad headers and short files
            reason = first_line(exc, 120)
            raise ConfigError(f"{f} is not a readable safetensors file ({reason})") from None
    return total, files


def check_folder(tf, folder: Path, fit_memory: bool = True, **kwargs: Any) -> None:
    """Refuse ``folder`` in one sentence unless it describes a model that fits this machine (unless not
    ``fit_memory``: a model calibrated from disk) and that its safetensors weights fill (see the module
    docstring). ``tf``: the transformers module; ``kwargs``: what ``from_pretrained`` will be given (config
    overrides apply; ``dtype``: the dtype the model will be loaded at, by default the checkpoint's own)."""
    import torch

    raw = read_config(folder)
    elements, files = weight_elements(folder)
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    try:
        config, _ = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True, return_unused_kwargs=True,
                                                  **kwargs)
        if getattr(config, "num_hidden_layers", 0) and not 0 <= int(config.num_hidden_layers) <= MAX_LAYERS:
            raise ValueError(f"num_hidden_layers {config.num_hidden_layers} is outside 0-{MAX_LAYERS}")
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "zero-element tensors" notes: the counts below decide
            meta = tf.AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, AssertionError, RuntimeError,
            IndexError, ZeroDivisionError) as exc:
        raise ConfigError(f"transformers cannot build the model of {folder / 'config.json'}: "
                          f"{first_line(exc, 200)}") from None
    needed = sum(p.numel() for p in meta.parameters())  # tied weights counted once, as the files hold them
    if isinstance(dtype, torch.dtype):
        itemsize = dtype.itemsize
    else:
        itemsize = getattr(getattr(config, "dtype", None) or torch.float32, "itemsize", 4)
    memory = memory_bytes()
    if fit_memory and memory is not None and needed * itemsize > memory:
        raise ConfigError(f"{folder} describes a model of {needed:,} parameters ({_gib(needed * itemsize)}), "
                          f"more than this machine's {_gib(memory)} of memory")
    if elements is not None and "quantization_config" not in raw and elements < needed:
        changed = sorted(set(kwargs) - {"dtype", "torch_dtype"})
        given = f" (with model.kwargs {', '.join(changed)} applied)" if changed else ""
        raise ConfigError(f"{folder}'s config{given} describes {needed:,} parameters but its weights hold {elements:,}: "
                          f"refused before building (transformers would leave the rest at random values)")


def check_loaded(folder: Path, info: dict) -> None:
    """Refuse a model transformers loaded with weights missing from ``folder`` (left at random values)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(f"{folder}'s weights lack {shown}: transformers would leave them at random values")
