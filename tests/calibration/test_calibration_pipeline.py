"""The calibration pipeline: one owner of the statistics of every calibrated method (prunelab.calibration)."""
import copy

import pytest
import torch
from torch import nn

from prunelab import ConfigError, Pruner
from prunelab.calibration import Calibration, Options, groups, materialise

transformers = pytest.importorskip("transformers")


def _stats(model, targets, kinds, batches, samples):
    run = groups(model, targets, Calibration(samples, (kinds,)), materialise(batches, samples), Options())
    try:
        return next(run).stats
    finally:
        run.close()


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)).double()


@pytest.mark.parametrize("kind", ["norms", "gram", "outputs", "mean_abs"])
def test_every_kind_of_statistic_equals_its_closed_form(kind):
    """Over 7 samples of batches of 3 (the third batch cut to one), each kind against a hand computation from
    the whole input at once."""
    model = _conv_net()
    batches = [torch.randn(3, 2, 4, 4, dtype=torch.double) for _ in range(3)]
    stats = _stats(model, {"0.weight": model[0].weight, "3.weight": model[3].weight}, {kind}, batches, 7)
    xs = torch.cat(batches)[:7]
    cols = nn.functional.unfold(xs, 3, padding=1).transpose(1, 2).reshape(-1, 18)  # conv rows (im2col)
    with torch.no_grad():
        conv_out = model[0](xs)
        hidden = model[:3](xs)
    if kind == "norms":
        assert stats["0.weight"].rows == 7 * 16 and stats["0.weight"].gram is None
        assert torch.allclose(stats["0.weight"].sq, cols.square().sum(0))
        assert torch.allclose(stats["3.weight"].norms(), hidden.norm(dim=0))
    elif kind == "gram":
        assert torch.allclose(stats["0.weight"].gram, cols.T @ cols)
        assert torch.allclose(stats["3.weight"].gram, hidden.T @ hidden)
    elif kind == "outputs":  # conv: channels are features, every position of every sample an observation
        feats = conv_out.transpose(1, -1).reshape(-1, 3)
        assert stats["0.weight"].outputs.n == 7 * 16 and stats["0.weight"].sq is None
        assert torch.allclose(stats["0.weight"].outputs.covariance(), torch.cov(feats.T))
    else:
        assert torch.allclose(stats["0.weight"].inputs.mean_abs(), xs.abs().mean((0, 2, 3)))
        assert torch.allclose(stats["3.weight"].inputs.mean_abs(), hidden.abs().mean(0))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("method", [{"name": "wanda", "samples": 12}, {"name": "sparsegpt", "samples": 12},
                                    {"name": "pca", "samples": 12, "tau": 0.9}])
def test_a_one_shot_iterator_gives_the_masks_of_a_list(method):
    batches = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    masks = []
    for feed in (list(batches), iter(batches), (b for b in batches[:1])):
        p = Pruner(_mlp(), method, schedule="manual", sparsity=0.5, example_inputs=batches[0])
        p.calibrate(feed, samples=12 if feed is not None else None)
        masks.append(p.prune(0.5))
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert masks[2] is not None  # a one-batch generator is data, not "empty"


@pytest.mark.parametrize("method,given,used", [
    ({"name": "wanda", "samples": 5}, None, 5),       # the method's own
    ({"name": "wanda", "samples": 5}, 3, 3),          # the caller's count overrides it
    ("wanda", None, 128),                              # the method's default
    ({"name": "pca", "samples": 20}, None, 20),
    ({"name": "sparsegpt", "samples": 9}, 4, 4),
])
def test_the_sample_count_is_the_callers_else_the_methods(method, given, used):
    p = Pruner(_mlp(), method, schedule="manual", sparsity=0.5, example_inputs=torch.randn(2, 6))
    p.calibrate([torch.randn(200, 6)], samples=given)
    p.prune(0.5)
    assert p.history[-1]["calibration_samples"] == used


def test_a_recipe_that_sets_only_the_batch_size_keeps_the_methods_sample_count():
    from prunelab.experiment.schema import CalibrationConfig

    assert CalibrationConfig(batch_size=4).samples is None  # "the method's own", not a number of its own


def _llama(tie=False, cache=True):
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie, use_cache=cache)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=40, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _tokens(n=3):
    return [torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(n)]


def _prune(model, method, **calibrate):
    p = Pruner(model, method, schedule="manual", sparsity=0.5)
    p.calibrate(_tokens(), **calibrate)
    p.prune(0.5)
    return p


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "{name: pca, sequential: true, units: false, channels: false}"])
def test_block_by_block_onloading_equals_the_in_memory_path_bit_for_bit(build, method):
    import yaml

    spec = yaml.safe_load(method)
    ref_model, model = build(), build()
    ref = _prune(ref_model, spec)
    got = _prune(model, spec, device="cpu")  # blocks moved, cached inputs on the host, full passes hooked
    assert list(got.masks) == list(ref.masks)
    for n in ref.masks:
        assert torch.equal(got.masks[n], ref.masks[n]), n
    for (n, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), n


def test_calibration_never_builds_a_key_value_cache_and_restores_the_config():
    cached, plain = _llama(cache=True), _llama(cache=False)
    seen = []
    for layer in cached.model.layers:
        layer.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("past_key_values")), with_kwargs=True)
    a, b = _prune(cached, "sparsegpt"), _prune(plain, "sparsegpt")
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert seen and all(c is None for c in seen) and cached.config.use_cache is True


def test_the_output_layer_of_a_language_model_stays_dense_for_calibrated_methods():
    p = _prune(_llama(), "wanda")
    assert "lm_head.weight" not in p.masks and "output layer" in p.summary()["skipped"]["lm_head.weight"]
    assert "lm_head.weight" in [u["name"] for u in p.summary()["untargeted"]]  # counted as a dense weight
    q = Pruner(_llama(), "wanda", schedule="manual", sparsity=0.5, targets={"output_layer": True})
    assert "lm_head.weight" in q.masks
    assert "lm_head.weight" in Pruner(_llama(), "magnitude", sparsity=0.5).masks  # other methods: a target


def test_hugging_face_blocks_come_from_no_split_modules_and_can_be_named():
    from prunelab.calibration.blocks import find_blocks

    model = _llama()
    targets = dict(model.named_parameters())
    blocks, named = find_blocks(model, targets)
    assert blocks == list(model.model.layers) and not named
    blocks, named = find_blocks(model, targets, ["model.layers.*.mlp"])
    assert blocks == [layer.mlp for layer in model.model.layers] and named
    with pytest.raises(ConfigError, match=r"sequential_targets \['nope\.\*'\] match no module"):
        find_blocks(model, targets, ["nope.*"])
    with pytest.raises(ConfigError, match="not a chain"):  # an MLP's output is not the next MLP's input
        _prune(_llama(), "sparsegpt", sequential_targets=["model.layers.*.mlp"])


def test_sequential_wanda_scores_each_layer_on_the_outputs_of_the_pruned_layers_before_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(16, 12)
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()

    def keep(w, norms):  # Wanda's rule by hand: half of every row, by |w| * ||x||
        s = w.abs() * norms
        return torch.zeros_like(w, dtype=torch.bool).scatter_(1, s.topk(w.shape[1] // 2, dim=1).indices, True)
    k1 = keep(w1, x.norm(dim=0))
    h = torch.relu(x @ (w1 * k1).T + model[0].bias.detach())
    k2 = keep(w2, h.norm(dim=0))
    p = Pruner(model, "wanda", schedule="manual", sparsity=0.5)
    p.calibrate([x])
    p.prune(0.5)
    assert torch.equal(p.masks["0.weight"], k1) and torch.equal(p.masks["2.weight"], k2)
    dense_h = torch.relu(x @ w1.T + model[0].bias.detach())
    assert not torch.equal(keep(w2, dense_h.norm(dim=0)), k2)  # the dense model's inputs decide otherwise
    one_pass = Pruner(copy.deepcopy(model),
                      {"name": "wanda", "sequential": False}, schedule="manual", sparsity=0.5)
    assert one_pass.needs.calibration.sequential is False


def test_dead_input_columns_go_first_within_the_pattern_and_the_rest_are_kept_unchanged():
    """Under 2:4, columns no input ever reached are the pruned ones where the pattern allows (by position); a
    third in the same group of four keeps its weights, and the decision says how many columns were unreached."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    before = model[0].weight.detach().clone()
    x = torch.randn(32, 8)
    x[:, 1:4] = 0  # three dead columns in the first group of four
    p = Pruner(model, {"name": "sparsegpt", "granularity": "nm", "samples": 32}, schedule="manual")
    p.calibrate([x])
    with pytest.warns(UserWarning, match="never reached 38% of the input columns of 0.weight"):
        p.prune(0.5)
    w, m = model[0].weight, p.masks["0.weight"]
    assert (m.reshape(4, 2, 4).sum(-1) == 2).all() and not m[:, 1:3].any() and m[:, 3].all()
    assert torch.equal(w[:, 3], before[:, 3]) and torch.equal(m, w != 0)
    assert p.history[-1]["unreached_columns"] == {"0.weight": 0.375}


def test_a_singular_gram_matrix_falls_back_to_magnitude_and_says_so():
    from prunelab.engine.reconstruction import sparsegpt

    w = torch.tensor([[4.0, -1.0, 3.0, 0.5], [1.0, 2.0, -0.2, 3.0]])
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])  # rank one: singular without dampening
    new, keep, ok = sparsegpt(w, x.T @ x, 0.5, percdamp=0.0)
    assert not ok and torch.equal(new, w * keep) and keep.tolist() == [[True, False, True, False], [False, True, False, True]]
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    p = Pruner(model, {"name": "sparsegpt", "percdamp": 0.0, "samples": 2}, schedule="manual", sparsity=0.5)
    p.calibrate([x])
    with pytest.warns(UserWarning, match="not positive definite"):
        p.prune(0.5)
    assert "0.weight" in p.history[-1]["unreconstructed"]


@pytest.mark.parametrize("batches,needle", [
    (torch.randn(4, 6), r"got one tensor of shape \(4, 6\): pass \[tensor\]"),
    ({"input_ids": torch.zeros(2, 3)}, "iterable of batches"),
    ("abc", "iterable of batches"),
    (["abc"], "calibration batch 0 is a str"),
    ([[1, 2, 3]], "calibration batch 0 is a list"),
])
def test_calibration_batches_of_the_wrong_kind_are_one_sentence(batches, needle):
    p = Pruner(_mlp(), "wanda", schedule="manual", sparsity=0.5)
    with pytest.raises(ConfigError, match=needle):
        p.calibrate(batches)


@pytest.mark.parametrize("kw,needle", [({"device": "cuda:7"}, "calibration device 'cuda:7' is not available"),
                                       ({"device": "nonsense"}, "not available"),
                                       ({"precision": "float16"}, "float32 or float64"),
                                       ({"cache_dtype": "int8"}, "cache_dtype is one of"),
                                       ({"sequential_targets": [3]}, "list of module-name globs")])
def test_calibration_options_are_checked(kw, needle):
    p = Pruner(_mlp(), "wanda", schedule="manual", sparsity=0.5)
    with pytest.raises(ConfigError, match=needle):
        p.calibrate([torch.randn(2, 6)], **kw)


def test_cached_inputs_in_bfloat16_still_prune_to_the_budget():
    p = _prune(_llama(), "sparsegpt", device="cpu", cache_dtype="bfloat16")
    assert p.masks.sparsity() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("override,needle", [
    ("prune.calibration={sequential_targets: ['nope.*']}", r"sequential_targets \['nope\.\*'\] match no module"),
    ("prune.calibration={precision: float16}", "prune.calibration.precision"),
    ("prune.calibration={cache_dtype: int8}", "prune.calibration.cache_dtype"),
])
def test_bad_calibration_settings_exit_2_from_the_cli_and_write_nothing(tmp_path, capsys, override, needle):
    from prunelab.cli import main

    code = main(["run", "quickstart", "prune.method=wanda", "prune.schedule.name=oneshot", override,
                 "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(needle, err), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_long_calibration_says_where_it_is():
    lines = []
    _prune(_llama(), "wanda", progress=lines.append)
    assert len(lines) == 3 and lines[0].startswith("calibrated and pruned model.layers.0 (1/3, ")


def test_calibration_keys_that_choose_no_batches_leave_the_batches_alone(tmp_path):
    from prunelab.experiment import RunContext, load_recipe

    plain = RunContext(load_recipe("quickstart", ["prune.method=wanda"]), tmp_path / "a", log=lambda m: None)
    keyed = RunContext(load_recipe("quickstart", ["prune.method=wanda", "prune.calibration={precision: float64}"]),
                       tmp_path / "b", log=lambda m: None)
    assert plain.calibration_batches() is plain.data.train and keyed.calibration_batches() is keyed.data.train


class _Stateful(nn.Module):
    """A chain whose blocks work only inside the model's own call (they check a flag it holds meanwhile)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.active = False
        for b in self.blocks:
            b.register_forward_pre_hook(self._check)

    def _check(self, module, args):
        if not self.active:
            raise RuntimeError("called outside the model")

    def forward(self, x):
        self.active = True
        try:
            for b in self.blocks:
                x = b(x)
            return x
        finally:
            self.active = False


def test_a_block_that_cannot_run_alone_is_one_sentence():
    p = Pruner(_Stateful(), "wanda", schedule="manual", sparsity=0.5)
    p.calibrate([torch.randn(3, 4)])
    with pytest.raises(ConfigError, match=r"cannot run alone on the inputs the model gave it \(RuntimeError: called outside"):
        p.prune(0.5)


def test_a_sequential_pipeline_method_needs_a_per_layer_allocation():
    with pytest.raises(ConfigError, match="sequential calibration decides each block on its own, but allocation global"):
        Pruner(_mlp(), {"name": "wanda", "allocation": "global"}, schedule="manual", sparsity=0.5)
    Pruner(_mlp(), {"name": "wanda", "allocation": "global", "sequential": False}, schedule="manual", sparsity=0.5)


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)

    def forward(self, src, tgt):
        return self.a(src) + self.b(tgt)


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, scale=None):
        return self.fc(x) * (1 if scale is None else scale)


def test_a_pair_is_read_as_the_model_and_the_caller_say():
    """Two required inputs: a pair is both (nn.Transformer(src, tgt)); one input: (inputs, targets); a second
    optional input: one sentence asking, and targets= settles it; a loader says it yields targets."""
    g = torch.Generator().manual_seed(0)
    two = _TwoInputs()
    p = Pruner(two, "wanda", sparsity=0.5, schedule="manual")
    p.calibrate([(torch.randn(6, 4, generator=g), torch.randn(6, 5, generator=g))])
    p.prune(0.5)  # both layers reached (else "never reached"): a pair of inputs, not (inputs, targets)
    assert {n: int(m.sum()) for n, m in p.masks.items()} == {"a.weight": 6, "b.weight": 9}  # half of each row
    scaled = _Scaled()
    q = Pruner(scaled, "wanda", sparsity=0.5, schedule="manual")
    with pytest.raises(ConfigError, match="say what it is, pruner.calibrate\\(batches, targets=True\\)"):
        q.calibrate([(torch.randn(6, 4), torch.tensor(2.0))])
    q.calibrate([(torch.randn(6, 4, generator=g), torch.tensor(2.0))], targets=False)  # x and its scale
    q.prune(0.5)
    q.calibrate([(torch.randn(6, 4, generator=g), torch.zeros(6))], targets=True)
    from prunelab.data.loader import TensorLoader

    q.calibrate(TensorLoader(torch.randn(6, 4), torch.zeros(6), 3))  # the loader says: (inputs, targets)
    one = Pruner(torch.nn.Linear(4, 3), "wanda", sparsity=0.5, schedule="manual")
    one.calibrate([(torch.randn(6, 4, generator=g), torch.zeros(6))])  # forward(input): a pair is with targets
    one.prune(0.5)
