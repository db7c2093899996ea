"""Text data for causal language models: token streams cut into fixed-length windows.

``pystdlib``: the source files of the running Python's standard library (``sysconfig``'s ``stdlib`` path; every
``*.py`` file outside ``site-packages``/``dist-packages``), a real corpus present offline on every machine. It
depends on the Python version, which every summary records through the data description. The split is by file
and fixed: a file whose relative path has CRC-32 ``c`` goes to held-out when ``c % 20 == 0``, to calibration when
``c % 20 == 1``, to training otherwise. Within a split the files are ordered by (CRC-32, path) and joined with a
NUL byte between them, so a token budget takes a spread of the library rather than its first package.

``wikitext2``: WikiText-2 (raw) through the ``datasets`` library, where a network or its cache is available
(``data.download=true``); train / validation / test splits as published.

Tokens are bytes (vocabulary 256: no tokenizer to download), or, with ``data.tokenizer`` (a local Hugging Face
model folder, e.g. the model's own), that tokenizer's ids; a window of ``seq_len + 1`` tokens gives inputs
``w[:-1]`` and next-token targets ``w[1:]``; consecutive windows overlap by one token (stride ``seq_len``), so
every token of the stream but the first is predicted exactly once. The held-out stream is evaluated the same way.
"""
from __future__ import annotations

import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, DataMissingError, first_line

VOCAB = 256
SPLITS = ("train", "calibration", "heldout")
SEPARATOR = b"\0"


def split_of(rel_path: str) -> str:
    """The fixed split of a corpus file, from its path relative to the corpus root (forward slashes)."""
    c = zlib.crc32(rel_path.encode()) % 20
    return "heldout" if c == 0 else "calibration" if c == 1 else "train"


def stdlib_files(root: str | Path | None = None) -> dict[str, list[Path]]:
    """The corpus files per split, in their fixed order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataMissingError(f"the Python standard library was not found at {root}")
    files: dict[str, list[tuple[int, str, Path]]] = {s: [] for s in SPLITS}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if "site-packages/" in rel or "dist-packages/" in rel or "__pycache__" in rel:
            continue
        files[split_of(rel)].append((zlib.crc32(rel.encode()), rel, p))
    return {s: [p for _, _, p in sorted(v)] for s, v in files.items()}


def byte_stream(files: list[Path], limit: int | None, encode=None) -> Tensor:
    """The files joined by NUL, cut at ``limit`` tokens (None: all), as int64 token ids: bytes, or with
    ``encode`` (text -> token ids, a tokenizer's) each file's text decoded as UTF-8 and encoded."""
    chunks: list[Tensor] = []
    total = 0
    for p in files:
        data = p.read_bytes() + SEPARATOR
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8) if encode is None else \
            torch.tensor(encode(data.decode("utf-8", errors="replace")), dtype=torch.int64)
        chunks.append(ids.to(torch.int64))
        total += len(ids)
        if limit is not None and total >= limit:
            break
    return torch.cat(chunks)[:limit] if chunks else torch.zeros(0, dtype=torch.int64)


def load_tokenizer(folder: str) -> Any:
    """The tokenizer saved in a local Hugging Face folder (no download, no code from the folder run), or one
    sentence: its files are someone else's data, and transformers' parsers raise KeyError, TypeError and
    others on malformed ones."""
    from ..models.hf import _transformers

    tf = _transformers()
    try:
        return tf.AutoTokenizer.from_pretrained(str(Path(folder).expanduser()), local_files_only=True,
                                                trust_remote_code=False)
    except Exception as exc:  # KeyboardInterrupt is not an Exception: it still stops the run
        reason = first_line(exc, 160)
        raise ConfigError(f"no tokenizer could be loaded from {folder}: {type(exc).__name__} {reason}") from None


def byte_tokenizer() -> Any:
    """The byte-level tokenization as a Hugging Face tokenizer (``tokenizers`` BPE over the 256 byte symbols,
    no merges): token id = byte value of the UTF-8 text, the ids the data sets here give without
    ``data.tokenizer``; saved with an exported model so the folder is complete for transformers and the tools
    that read it. The byte-to-symbol table is the one GPT-2's byte-level tokenizers share (transformers')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={symbol[b]: b for b in range(VOCAB)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def data_tokenizer(folder: str | None) -> Any:
    """The tokenizer a text data set encodes with: the one saved in ``folder`` (``data.tokenizer``), else bytes."""
    return load_tokenizer(folder) if folder else byte_tokenizer()


def tokenizer_encoder(folder: str) -> tuple[Any, int]:
    """(text -> token ids, vocabulary size) of the tokenizer saved in a local Hugging Face model folder."""
    tok = load_tokenizer(folder)
    return (lambda text: tok(text, add_special_tokens=False)["input_ids"]), len(tok)


def windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each (windows, seq_len): windows of seq_len + 1 tokens at stride seq_len; the tail
    shorter than a window is dropped."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ConfigError(f"the token stream has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    w = stream[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def load_text(name: str, seq_len: int, tokens: dict[str, int | None], download: bool = False,
              tokenizer: str | None = None) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """({split: (inputs, targets)}, vocabulary size) of the text data set ``name`` with at most
    ``tokens[split]`` tokens a split: bytes, or the tokens of the tokenizer in the local folder ``tokenizer``."""
    encode, vocab = tokenizer_encoder(tokenizer) if tokenizer else (None, VOCAB)
    if name == "pystdlib":
        files = stdlib_files()
        streams = {s: byte_stream(files[s], tokens.get(s), encode) for s in SPLITS}
    elif name == "wikitext2":
        streams = _wikitext2(tokens, download, encode)
    else:
        raise ConfigError(f"unknown text data set {name!r}; valid: pystdlib, wikitext2")
    return {s: windows(t, seq_len) for s, t in streams.items()}, vocab


def _wikitext2(tokens: dict[str, int | None], download: bool, encode=None) -> dict[str, Tensor]:
    try:
        import datasets
    except ImportError:
        raise ConfigError("wikitext2 needs the datasets library: pip install datasets") from None
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1",
                                   download_mode=None if download else "reuse_cache_if_exists")
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds for "no network, no cache"
        raise DataMissingError(f"WikiText-2 could not be loaded ({type(exc).__name__}); add data.download=true "
                               "where a network is available, or use data.name=pystdlib offline") from None
    out = {}
    for split, hf in (("train", "train"), ("calibration", "validation"), ("heldout", "test")):
        text = "\n\n".join(ds[hf]["text"])
        ids = list(text.encode()) if encode is None else encode(text)
        out[split] = torch.tensor(ids[: tokens.get(split)], dtype=torch.int64)
    return out


def describe(name: str) -> str:
    """The data set as a run summary names it: pystdlib with the Python version whose library it is."""
    return f"{name} (Python {sys.version.split()[0]} standard library)" if name == "pystdlib" else name
