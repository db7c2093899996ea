"""Model folders someone else wrote (``hf:/folder``): each hostile one is one sentence before anything is built,
nothing in a pickle or the folder's code runs, and the folder is left byte-identical."""
import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from prunelab.cli import main  # noqa: E402
from prunelab.errors import CheckpointError, ConfigError  # noqa: E402
from prunelab.models.hf import build_hf  # noqa: E402

CONFIG = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, num_hidden_layers=2, vocab_size=256)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**CONFIG))
    return {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or
            not model.config.tie_word_embeddings}


def _folder(root: Path, name: str, config: dict | str, tensors: dict | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(folder / "model.safetensors"))
    return folder


class _Runs:
    """Unpickling this runs ``touch``: the proof that nothing in a model folder was executed."""
    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def _hostile(root: Path, weights: dict) -> dict[str, tuple[Path, str]]:
    """{case: (folder, a word its one sentence must hold)}."""
    cases = {
        "a config of 600 trillion parameters over one weight": (
            _folder(root, "absurd", {**CONFIG, "hidden_size": 200_000, "intermediate_size": 800_000,
                                     "num_hidden_layers": 1000}, {"x": torch.zeros(1)}), "memory"),
        "an empty weights file": (_folder(root, "empty", CONFIG), "not a readable safetensors file"),
        "garbage safetensors": (_folder(root, "garbage", CONFIG), "not a readable safetensors file"),
        "half the weights": (_folder(root, "half", CONFIG, dict(list(weights.items())[:5])), "random values"),
        "every weight renamed": (_folder(root, "renamed", CONFIG, {f"x.{k}": v for k, v in weights.items()}),
                                 "lack"),
        "a billion layers": (_folder(root, "deep", {**CONFIG, "num_hidden_layers": 10 ** 9}, {}), "0-1024"),
        "a negative width": (_folder(root, "negative", {**CONFIG, "hidden_size": -4}, {"x": torch.zeros(1)}),
                             "negative"),
        "config.json not JSON": (_folder(root, "badjson", "{not json", {"x": torch.zeros(1)}), "not valid JSON"),
        "config.json a list": (_folder(root, "list", "[1, 2]", {"x": torch.zeros(1)}), "not an object"),
        "no weights": (_folder(root, "noweights", CONFIG), "holds no weights"),
        "code in the folder": (_folder(root, "remote", {**CONFIG, "model_type": "evil", "auto_map": {
            "AutoModelForCausalLM": "m.M"}}, {"x": torch.zeros(1)}), "cannot build"),
        "a pickle that runs a command": (_folder(root, "pickle", CONFIG), "nothing in it ran"),
    }
    (root / "empty" / "model.safetensors").write_bytes(b"")
    (root / "garbage" / "model.safetensors").write_bytes(os.urandom(4096))
    (root / "remote" / "m.py").write_text(f"import os\nos.system('touch {root / 'ran'}')\nclass M: pass\n")
    torch.save({"model.embed_tokens.weight": _Runs(root / "ran")}, root / "pickle" / "pytorch_model.bin")
    return cases


def _snapshot(root: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_hostile_folder_is_one_sentence_before_anything_is_built(tmp_path, weights):
    cases = _hostile(tmp_path, weights)
    before = _snapshot(tmp_path)
    for case, (folder, needle) in cases.items():
        with pytest.raises(ConfigError) as err:
            build_hf(str(folder), 256)
        message = str(err.value)
        assert needle in message and "\n" not in message and len(message) < 400, (case, message)
    assert not (tmp_path / "ran").exists()  # neither the pickle nor the folder's code ran
    assert _snapshot(tmp_path) == before


def test_a_sound_folder_loads_its_own_weights_as_safetensors_or_as_a_pickle_of_tensors(tmp_path, weights):
    sound = _folder(tmp_path, "sound", CONFIG, weights)
    model = build_hf(str(sound), 256)
    assert torch.equal(model.state_dict()["model.layers.1.mlp.up_proj.weight"],
                       weights["model.layers.1.mlp.up_proj.weight"])
    pickled = _folder(tmp_path, "pickled", CONFIG)
    torch.save(weights, pickled / "pytorch_model.bin")
    again = build_hf(str(pickled), 256)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ConfigError, match="hidden_size applied"):  # an override that no longer fits its weights
        build_hf(str(sound), 256, hidden_size=64)


def test_the_command_line_refuses_a_hostile_folder_in_one_line(tmp_path, weights, capsys):
    (tmp_path / "models").mkdir()
    cases = _hostile(tmp_path / "models", weights)
    before = _snapshot(tmp_path)
    for name in ("a config of 600 trillion parameters over one weight", "a pickle that runs a command"):
        capsys.readouterr()
        code = main(["run", "llama_pystdlib_ria", f"model.name=hf:{cases[name][0]}", "model.kwargs={}", "--runs-dir",
                     str(tmp_path / "runs"), "--no-progress", "--stop-after", "dense"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("prunelab: error: "), (name, err)
        assert cases[name][1] in err[0]
    assert not (tmp_path / "models" / "ran").exists()
    assert {k: v for k, v in _snapshot(tmp_path).items() if "/runs/" not in k} == before


def test_a_shrunk_file_naming_a_huge_model_is_refused_before_building_it(tmp_path):
    from prunelab.export.shrunk import load_shrunk, model_spec, save_shrunk
    from prunelab.models import build_model

    small = build_model("lenet300_100", (1, 8, 8), 10, seed=0)
    path = tmp_path / "small.safetensors"
    save_shrunk(path, small, {}, model_spec("lenet300_100", {}, (1, 8, 8), 10))
    assert torch.equal(load_shrunk(path)[0].state_dict()["fc1.weight"], small.state_dict()["fc1.weight"])
    # a manifest naming a 4-GB VGG over the same small tensors: refused on the meta device, nothing allocated
    forged = tmp_path / "forged.safetensors"
    save_shrunk(forged, small, {}, model_spec("vgg19", {}, (3, 2048, 2048), 100_000))
    with pytest.raises(CheckpointError, match="does not match its width manifest"):
        load_shrunk(forged)


def test_a_model_cut_outside_its_config_is_refused_before_a_folder_is_written(tmp_path):
    """ModernBERT's channels cut by the generic trace: its config cannot state the new widths, so a saved folder
    would not load; refused in one sentence, nothing written. A model cut into its own config saves."""
    from prunelab import Pruner
    from prunelab.export import shrink
    from prunelab.models.hf import save_pretrained

    config = transformers.ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                           cls_token_id=1, sep_token_id=2, local_attention=8)
    torch.manual_seed(0)
    model = transformers.ModernBertForMaskedLM(config).eval()
    x = torch.randint(3, 64, (1, 8))
    pruner = Pruner(model, "l1_filter", schedule="manual", sparsity=0.5, example_inputs=x)
    pruner.prune(0.5, final=True)
    small = shrink(model, pruner.masks, example_inputs=x)[0]
    with pytest.raises(ConfigError, match="--format shrunk") as err:
        save_pretrained(small, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    llama = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**CONFIG))
    save_pretrained(llama, tmp_path / "llama")
    assert (tmp_path / "llama" / "config.json").is_file()
