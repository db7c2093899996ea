"""GGUF export through llama.cpp's own converter: the file appears whole or not at all, a missing converter is one
sentence, and where a llama.cpp checkout (``LLAMA_CPP``) and llama-cpp-python are installed, greedy decoding of the
file equals transformers' on the folder it was converted from (byte tokens; with FLAP's compensation biases)."""
import os

import pytest
import torch

from prunelab import ConfigError
from prunelab.outputs import OutputError
from prunelab.export.gguf import find_converter, to_gguf

transformers = pytest.importorskip("transformers")


def test_a_missing_converter_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP", raising=False)
    with pytest.raises(ConfigError, match="pass --llama-cpp DIR"):
        find_converter(None)
    with pytest.raises(ConfigError, match="neither a llama.cpp checkout"):
        find_converter(tmp_path)
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert find_converter(tmp_path) == (tmp_path / "convert_hf_to_gguf.py").resolve()
    monkeypatch.setenv("LLAMA_CPP", str(tmp_path))
    assert find_converter(None).parent == tmp_path.resolve()


def test_a_failed_conversion_leaves_nothing_and_keeps_the_old_file(tmp_path):
    """A converter that writes half a file and fails: its last words in the error, the earlier file intact, no
    temporary file left."""
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text("import sys\n"
                      "def main():\n"
                      "    out = sys.argv[sys.argv.index('--outfile') + 1]\n"
                      "    open(out, 'wb').write(b'GGUF half')\n"
                      "    sys.exit('the model architecture is not supported')\n")
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    out.write_bytes(b"earlier")
    with pytest.raises(OutputError, match="already exists; add --force"):
        to_gguf(tmp_path, out, script)
    with pytest.raises(ConfigError, match="failed: the model architecture is not supported"):
        to_gguf(tmp_path, out, script, force=True)
    assert out.read_bytes() == b"earlier" and os.listdir(out.parent) == ["model.gguf"]
    with pytest.raises(ConfigError, match="outtype is one of"):
        to_gguf(tmp_path, out, script, outtype="q4_k_m")


def test_the_byte_tokens_are_recognized(tmp_path):
    from prunelab.data.text import byte_tokenizer
    from prunelab.export.gguf import byte_tokens

    byte_tokenizer().save_pretrained(str(tmp_path / "bytes"))
    assert byte_tokens(tmp_path / "bytes") and not byte_tokens(tmp_path)


def _checkout():
    path = os.environ.get("LLAMA_CPP")
    if not path or not os.path.isfile(os.path.join(path, "convert_hf_to_gguf.py")):
        pytest.skip("no llama.cpp checkout (LLAMA_CPP) to convert with")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python runs the converted file")
    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports it for LLaMA models")
    return find_converter(path)


@pytest.mark.parametrize("compensated", [False, True])
def test_greedy_decode_of_the_gguf_equals_transformers(tmp_path, compensated):
    converter = _checkout()
    from llama_cpp import Llama

    from prunelab import Pruner
    from prunelab.data.text import byte_tokenizer
    from prunelab.export import shrink
    from prunelab.models.hf import save_pretrained

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    if compensated:  # a shrunk model whose readers carry FLAP's biases (mlp_bias, attention_bias)
        method = {"name": "transformer_units", "units": ["mlp", "heads"], "criterion": "fluctuation",
                  "score_from": "readers", "compensate": "bias"}
        pruner = Pruner(model, method, schedule="manual", sparsity=0.5, example_inputs=x[:1])
        pruner.calibrate([x])
        pruner.prune(0.5, final=True)
        model, _ = shrink(model, pruner.masks, x[:1], graph=pruner.channels)
    save_pretrained(model, tmp_path / "hf", tokenizer=byte_tokenizer())
    out = to_gguf(tmp_path / "hf", tmp_path / "model.gguf", converter, outtype="f32")
    prompt = "def f(x):\n    return "
    ids = list(prompt.encode())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    llm = Llama(str(out), n_ctx=64, n_threads=1, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids  # id = UTF-8 byte there too
    got = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(t)
        if len(got) == len(want):
            break
    assert got == want
