"""Prune, then quantize: ``export --format hf --quantize int8|int4`` writes a folder torchao quantized, which plain
``from_pretrained`` loads (torchao installed), every pruned weight still exactly zero."""
import pytest
import torch

from prunelab import ConfigError, Pruner
from prunelab.data.text import byte_tokenizer
from prunelab.experiment.export_run import export_run
from prunelab.models.hf import save_pretrained

transformers = pytest.importorskip("transformers")


def test_a_quantized_folder_keeps_the_zeros_and_loads(tmp_path):
    pytest.importorskip("torchao")
    from prunelab.export.quantize import quantize_folder

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2)
    model = transformers.LlamaForCausalLM(config).eval()
    Pruner(model, "magnitude", sparsity=0.5, schedule="manual").prune(0.5)
    save_pretrained(model, tmp_path / "float", tokenizer=byte_tokenizer())
    pruned = model.model.layers[1].mlp.up_proj.weight.detach() == 0
    x = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    for kind, close in (("int8", 0.02), ("int4", 0.3)):
        quantize_folder(tmp_path / "float", tmp_path / kind, kind, tokenizer=byte_tokenizer())
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / kind)).eval()
        w = back.model.layers[1].mlp.up_proj.weight
        assert type(w).__name__ != "Parameter" and not w.dequantize()[pruned].any()
        assert pruned.float().mean() == pytest.approx(0.5, abs=0.01)
        with torch.no_grad():
            assert (back(x).logits - model(x).logits).abs().max() < close
        assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / kind))("ab")["input_ids"] == [97, 98]


def test_quantize_is_refused_where_it_does_not_apply(tmp_path):
    with pytest.raises(ConfigError, match="--quantize writes a Hugging Face folder"):
        export_run(tmp_path / "no-run", "gguf", quantize="int8")
    with pytest.raises(ConfigError, match="--quantize is one of int8, int4"):
        export_run(tmp_path / "no-run", "hf", quantize="fp4")
