"""Hugging Face causal language models as prunelab models (``transformers``: ``pip install "prunelab[hf]"``).

``hf:TYPE`` (e.g. ``hf:gpt2``, ``hf:llama``) builds a randomly initialised model of that ``model_type`` from a
config whose fields are the recipe's ``model.kwargs`` (``vocab_size`` defaults to the data set's vocabulary);
``hf:PATH`` (a local folder, absolute or starting with ``.``) loads it with ``local_files_only=True``: nothing is
ever downloaded, and the folder passes :mod:`.folder`'s checks (config ranges, weights that fill the model,
safetensors or a pickle of tensors only, no code run) before anything is built. The model is returned as transformers builds it, unwrapped, so its parameter names, its
``save_pretrained`` and its tied weights are its own; tasks read its ``logits``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, first_line


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError('Hugging Face models need transformers: pip install "prunelab[hf]"') from None
    transformers.logging.set_verbosity_error()  # its advice and progress bars would bury the run's own output
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _config_keys(tf, spec: str) -> set[str]:
    """The options a model type's config knows: its attributes and their aliases (``hidden_size`` for GPT-2's
    ``n_embd``) and the options every config has."""
    config = tf.AutoConfig.for_model(spec)
    return (set(config.to_dict()) | set(getattr(config, "attribute_map", {})) |
            set(tf.PretrainedConfig().to_dict()) | set(vars(config)))


def max_positions(model: nn.Module) -> int | None:
    """The longest input a Hugging Face model's position embedding covers (None when it does not say)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_target_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def is_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir()


def build_hf(spec: str, vocab_size: int, **kwargs: Any) -> nn.Module:
    """The causal LM of ``spec`` (a model type or a local folder), see the module docstring."""
    tf = _transformers()
    if is_local(spec):
        from .folder import check_folder, check_loaded

        folder = Path(spec).expanduser()
        check_folder(tf, folder, **kwargs)  # before anything is built
        try:
            model, info = tf.AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True, **kwargs)
        except pickle.UnpicklingError:  # torch.load(weights_only=True) met something other than tensors
            raise ConfigError(f"{folder}'s PyTorch pickle holds more than weights, so it was not loaded (nothing "
                              f"in it ran); convert the weights to safetensors") from None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            if "ignore_mismatched_sizes" in str(exc):  # its "report above" is not shown at error verbosity
                given = f" with model.kwargs {', '.join(sorted(kwargs))} applied" if kwargs else ""
                raise ConfigError(f"the weights in {folder} do not have the shapes its config{given} asks "
                                  f"for") from None
            raise ConfigError(f"transformers could not load {folder}: {first_line(exc, 200)}") from None
        check_loaded(folder, info)
    else:
        try:
            unknown = sorted(set(kwargs) - _config_keys(tf, spec))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"bad Hugging Face model hf:{spec}: {first_line(exc, 200)}") from None
        if unknown:  # transformers keeps any keyword as an attribute: a typo would silently change nothing
            raise ConfigError(f"hf:{spec} has no config option {', '.join(unknown)} (model.kwargs); see "
                              f"transformers' {type(tf.AutoConfig.for_model(spec)).__name__}")
        try:
            config = tf.AutoConfig.for_model(spec, **{"vocab_size": vocab_size, **kwargs})
            model = tf.AutoModelForCausalLM.from_config(config)
        except (ValueError, TypeError, KeyError, AssertionError, RuntimeError, IndexError) as exc:
            # AssertionError: a padding index beyond the vocabulary, and other inconsistent configs
            raise ConfigError(f"bad Hugging Face model hf:{spec}: {first_line(exc, 200)}") from None
    model.config.use_cache = False  # training and evaluation never reuse a key/value cache
    return model


def save_pretrained(model: nn.Module, folder: str | Path, force: bool = False, tokenizer: Any = None) -> Path:
    """``model.save_pretrained(folder)`` (safetensors), with ``tokenizer`` saved beside it when given, written
    into a new folder beside ``folder`` and moved into place, so an interrupted export never leaves a
    half-written model folder. An existing ``folder`` is replaced only if prunelab wrote it and ``force`` (see
    :mod:`prunelab.outputs`); a user's folder never is."""
    from ..outputs import error_from_safetensors, install_folder, prepare_folder, temp_folder_beside, user_mode

    if not hasattr(model, "save_pretrained"):
        raise ConfigError("this run's model is not a Hugging Face model: export it as dense, sparse or onnx")
    check_config_holds(model)
    prepare_folder(folder, force)  # before the work: refuse early
    tmp = temp_folder_beside(folder)
    # prunelab trains and evaluates without a key-value cache (config.use_cache off in memory); a folder is for
    # inference, where generate() without it decoded 0.66-0.81x as fast (benchmarks/moe.py): saved with it on
    cache = getattr(model.config, "use_cache", None)
    gen = getattr(model, "generation_config", None)
    gen_cache = getattr(gen, "use_cache", None)
    try:
        try:
            if cache is not None:
                model.config.use_cache = True
            if gen_cache is not None:
                gen.use_cache = True
            model.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as exc:  # safetensors reports a full disk or a file-size limit as its own error type
            os_error = error_from_safetensors(exc, Path(folder) / "model.safetensors")
            if os_error is None:
                raise
            raise os_error from None
        for f in tmp.rglob("*"):  # safetensors makes its file private (0600); an export is meant to be shared
            user_mode(f, folder=f.is_dir())
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if cache is not None:
            model.config.use_cache = cache
        if gen_cache is not None:
            gen.use_cache = gen_cache
    return install_folder(tmp, folder, "a Hugging Face model folder (prunelab export --format hf)", force)


def check_config_holds(model: nn.Module) -> None:
    """ConfigError unless ``type(model)(model.config)`` has the model's parameter shapes: a model whose layers
    were resized outside its config (channel surgery on ModernBERT, whose per-layer widths its config cannot
    state) would be saved as a folder transformers refuses to load. Built on the meta device: no memory."""
    import torch

    try:
        with torch.device("meta"):
            fresh = type(model)(model.config)
    except Exception as exc:  # the family's own config checks
        raise ConfigError(f"transformers cannot rebuild this {type(model).__name__} from its config "
                          f"({first_line(exc, 120)}), so a saved "
                          f"folder would not load") from None
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    wrong = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if k in want and want[k] != tuple(v.shape)]
    if wrong:
        k, shape = wrong[0]
        raise ConfigError(f"{k} is {list(shape)} but this {type(model).__name__}'s config builds it as "
                          f"{list(want[k])} ({len(wrong)} tensors differ: widths cut outside the config), so "
                          "transformers could not load the folder; export it with --format shrunk or onnx")
