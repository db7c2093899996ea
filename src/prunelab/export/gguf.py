"""GGUF files for llama.cpp (and Ollama, LM Studio), written by llama.cpp's own converter.

prunelab writes the Hugging Face folder with its tokenizer (:func:`prunelab.models.hf.save_pretrained`) and runs
``convert_hf_to_gguf.py`` of a llama.cpp checkout on it, in its own process. The converter is llama.cpp's: it
follows the runtime's tensor names and layouts release by release, and it is not on PyPI (a checkout brings it
with its ``gguf-py``), so prunelab finds it, never copies it: ``--llama-cpp DIR`` or ``LLAMA_CPP``.

One hook: the converter names a byte-level tokenizer's pre-tokenizer by hashing the ids it gives a fixed text,
from a table of published models; the byte tokens a run trains on without ``data.tokenizer`` (id = UTF-8 byte, no
merges: :func:`prunelab.data.text.byte_tokenizer`) are in no such table. With no merges no pre-tokenizer changes
which ids a text gets, so for that tokenizer alone the converter is told llama.cpp's ``default``; and as
llama.cpp's loader requires a byte-level tokenizer's merges list, which gguf-py writes only when it is not empty,
that list holds one merge of two names no symbol ever is (``prunelab:none``): it never applies.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..outputs import OutputError, check_replaceable, user_mode

CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # the converter's own; k-quants come from llama.cpp's llama-quantize

# Runs the converter's main() after replacing get_vocab_base_pre where the byte tokenizer needs it (argv[2] "1").
_RUNNER = r"""
import runpy, sys
from pathlib import Path
conv, byte = Path(sys.argv[1]), sys.argv[2] == "1"
sys.argv = [str(conv)] + sys.argv[3:]
sys.path[:0] = [str(conv.parent)]
g = runpy.run_path(str(conv), run_name="prunelab_gguf")
if byte:
    owners = [c for c in list(g.values()) + [getattr(m, n, None) for m in list(sys.modules.values())
              if getattr(m, "__name__", "").startswith("conversion") for n in dir(m)]
              if isinstance(c, type) and "get_vocab_base_pre" in c.__dict__]
    if not owners:
        sys.exit("prunelab: this convert_hf_to_gguf.py has no get_vocab_base_pre to name the byte tokenizer's")
    for c in owners:
        c.get_vocab_base_pre = lambda self, tokenizer: "default"
    gguf = sys.modules["gguf"]
    add_to_gguf = gguf.SpecialVocab.add_to_gguf
    def with_merge(self, *a, **k):
        self.merges = self.merges or ["prunelab:none prunelab:none"]
        return add_to_gguf(self, *a, **k)
    gguf.SpecialVocab.add_to_gguf = with_merge
g["main"]()
"""


def find_converter(where: str | Path | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: in ``where`` (a llama.cpp checkout, or the script), else in the
    folder ``LLAMA_CPP`` names; ConfigError saying how to provide one."""
    for hint, said in ((where, "--llama-cpp"), (os.environ.get("LLAMA_CPP"), "LLAMA_CPP")):
        if not hint:
            continue
        path = Path(hint).expanduser()
        script = path / CONVERTER if path.is_dir() else path
        if script.is_file() and script.name == CONVERTER:
            return script.resolve()
        raise ConfigError(f"{said} {hint} is neither a llama.cpp checkout nor its {CONVERTER}")
    raise ConfigError(f"GGUF export runs llama.cpp's own converter, {CONVERTER}, which is not on PyPI: pass "
                      "--llama-cpp DIR (a llama.cpp checkout, e.g. git clone https://github.com/ggml-org/llama.cpp) "
                      "or set LLAMA_CPP; export --format hf writes the folder it converts")


def byte_tokens(folder: str | Path) -> bool:
    """Whether the folder's tokenizer is the byte tokens (``tokenizer.json``: BPE over 256 symbols, no merges)."""
    import json

    try:
        model = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return model.get("type") == "BPE" and len(model.get("vocab") or {}) == 256 and not model.get("merges")


def to_gguf(folder: str | Path, out: str | Path, converter: Path, outtype: str = "f16", force: bool = False,
            timeout: float = 3600) -> Path:
    """Convert the Hugging Face folder ``folder`` into the GGUF file ``out`` with llama.cpp's ``converter``
    (a byte-token tokenizer, :func:`byte_tokens`, named for it as the module docstring says).

    ``out`` must be absent, or a regular file and ``force`` (never a folder, a link or a device; which paths a
    command may write is checked where the command starts, :mod:`prunelab.outputs`). The file appears whole or
    not at all: the converter writes a temporary file beside ``out``, renamed over it only
    when the converter succeeded. ConfigError with the converter's last words when it fails (a model
    llama.cpp does not support, a missing dependency of the converter)."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"GGUF outtype is one of {', '.join(OUTTYPES)}, got {outtype!r}")
    out = Path(out)
    check_replaceable(out)
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; add --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    cmd = [sys.executable, "-c", _RUNNER, str(converter), "1" if byte_tokens(folder) else "0", str(folder),
           "--outfile", tmp, "--outtype", outtype]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or Path(tmp).stat().st_size == 0:
            last = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()][-3:]
            raise ConfigError(f"llama.cpp's converter ({converter}) failed: " + " / ".join(last))
        user_mode(tmp)
        os.replace(tmp, out)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"llama.cpp's converter did not finish in {timeout:.0f} s") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
