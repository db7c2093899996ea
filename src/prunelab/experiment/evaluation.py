"""Held-out evaluation of a language model beyond one stream's perplexity: perplexity at several context lengths,
and lm-eval's tasks where the optional ``lm-eval`` package is installed (``prunelab eval RUN``).

Context lengths. The held-out stream is cut into windows of L tokens at stride L (no overlap, no context carried
from one window to the next), every token but the first predicted once; this is the convention of the SparseGPT
and Wanda papers' perplexities (WikiText-2 at 2048 tokens; later papers use 4096, so numbers at different L are
not comparable). A run's summary states it and reports the dense and pruned perplexity at the recipe's
``seq_len`` and at half of it (``eval.perplexity_at``): a pruned model can lose more on long contexts than on
short ones, which one length hides.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

CONVENTION = ("windows of L tokens at stride L (no overlap, no context carried between windows), every held-out "
              "token but the first predicted once")


def default_lengths(seq_len: int) -> list[int]:
    """The context lengths a run's summary reports: half the recipe's window and the window itself."""
    return sorted({max(seq_len // 2, 1), seq_len})


def stream_of(loader) -> Tensor:
    """The token stream a loader of windows (stride = window, one token of overlap) was cut from."""
    xs, last = [], None
    for x, y in loader:
        xs.append(x.reshape(-1))
        last = y[-1, -1:]
    if last is None:
        raise ConfigError("the held-out split has no windows to evaluate")
    return torch.cat(xs + [last])


def max_context(model: nn.Module) -> int | None:
    """The longest context the model's config allows (None: not stated)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        n = getattr(config, key, None)
        if isinstance(n, int):
            return n
    return None


#: The most context lengths one ``prunelab eval`` measures.
MAX_LENGTHS = 32


def perplexity_at(models: dict[str, nn.Module], loader, lengths: list[int], device: str = "cpu",
                  batch_size: int = 16) -> dict[str, dict[str, float]]:
    """{str(L): {name: held-out perplexity}} of each model at each context length ``L`` (see the module
    docstring); ConfigError for a length the stream or a model cannot take."""
    from ..data.loader import TensorLoader
    from ..data.text import windows
    from ..training import evaluate

    if not 1 <= len(lengths) <= MAX_LENGTHS:
        raise ConfigError(f"give 1 to {MAX_LENGTHS} context lengths (each is a pass over the held-out text), "
                          f"got {len(lengths)}")
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"context lengths repeat: {', '.join(str(n) for n in lengths)}")
    for n in lengths:  # every length checked before the first pass
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"a context length is a whole number of tokens >= 1, got {n!r}")
        for name, m in models.items():
            limit = max_context(m)
            if limit is not None and n > limit:
                raise ConfigError(f"context length {n} is longer than the {limit} positions the {name} model has")
    stream = stream_of(loader)
    out: dict[str, dict[str, float]] = {}
    for n in lengths:
        x, y = windows(stream, n)
        held = TensorLoader(x, y, batch_size)
        out[str(n)] = {name: evaluate(m, held, device, "causal_lm")["ppl"] for name, m in models.items()}
    return out


def lm_eval_tasks(model: nn.Module, tokenizer_folder: str | None, tasks: list[str], limit: int | None = None,
                  batch_size: int = 8, device: str = "cpu") -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on ``model`` (its HFLM wrapper over the model object and the tokenizer of
    the run's data) for ``tasks``: {task: {metric: value}}. ConfigError in one sentence when lm-eval is not
    installed, or the model reads bytes (no tokenizer: lm-eval's tasks are text)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ConfigError('prunelab eval --tasks runs lm-eval, which is not installed: pip install '
                          '"prunelab[lm-eval]" (perplexity at context lengths needs nothing more)') from None
    if tokenizer_folder is None:
        raise ConfigError("lm-eval's tasks are text, and this run's model reads bytes (its recipe has no "
                          "data.tokenizer); evaluate a run trained with a tokenizer, or use --lengths")
    from ..data.text import load_tokenizer

    tok = load_tokenizer(tokenizer_folder)
    lm = HFLM(pretrained=model.to(device).eval(), tokenizer=tok, batch_size=batch_size, device=device)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in (results or {}).get("results", {}).items()}
