"""Experts as a unit of structure: a mixture-of-experts block loses whole experts with their router rows, the
masked model never routes to them, and the smaller model of the same class (fewer experts) computes the same."""
import copy

import pytest
import torch

from prunelab import ConfigError, Pruner
from prunelab.export import shrink

transformers = pytest.importorskip("transformers")

V = 48
FAMILIES = {"mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
            "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                          "shared_expert_intermediate_size": 24}}


def _model(kind: str, **kw):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(kind, **{
        "vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, **FAMILIES.get(kind, {}), **kw})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.config.use_cache = False
    return model


def _x(n=2, seed=0):
    return torch.randint(0, V, (n, 10), generator=torch.Generator().manual_seed(seed))


def _pruned(model, score: str, sparsity: float = 0.5):
    p = Pruner(model, {"name": "transformer_units", "units": ["experts"], "expert_score": score},
               schedule="manual", sparsity=sparsity, example_inputs=_x(1))
    if p.needs.calibration is not None:
        p.calibrate([_x(4, s) for s in range(1, 3)])
    p.prune(sparsity, final=True)
    return p


def _routed(model, x) -> dict[int, set[int]]:
    """{block: the experts any token of ``x`` was routed to}, read from what each experts module is given."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        def hook(module, args, i=i):
            seen.setdefault(i, set()).update(args[1].unique().tolist())
        handles.append(layer.mlp.experts.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("kind", sorted(FAMILIES))
@pytest.mark.parametrize("score", ["reap", "frequency", "criterion"])
def test_half_the_experts_go_never_chosen_and_the_smaller_model_reloads_with_the_same_logits(kind, score, tmp_path):
    model = _model(kind)
    p = _pruned(model, score)
    removed = p.structure.removed(p.masks)
    assert sorted(len(v) for v in removed.values()) == [2, 2]
    routed = _routed(model, _x(4, 7))
    for i in range(2):  # a removed expert is never chosen: its logit is -inf, not 0
        assert not routed[i] & set(removed[f"model.layers.{i}.mlp.experts"].tolist())
    small = shrink(model, p.masks, example_inputs=_x(1))[0]  # float64 check against the routing-masked model
    experts = small.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape[0] == 2 and small.model.layers[0].mlp.gate.weight.shape[0] == 2
    small.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(_x(3, 9)).logits, model(_x(3, 9)).logits, atol=1e-5)


def test_without_routing_around_them_zeroed_experts_would_still_be_chosen():
    """The reason for routing-aware routers: the model with the removed experts' weights merely zeroed (router
    rows at zero: logit 0) routes tokens to them and computes something else than the smaller model."""
    model = _model("mixtral")
    p = _pruned(model, "criterion")
    plain = copy.deepcopy(model)
    for layer in plain.model.layers:  # the copy carries the routing hooks: drop them
        layer.mlp.gate._forward_pre_hooks.clear()
        layer.mlp.gate._forward_hooks.clear()
    gone = set(p.structure.removed(p.masks)["model.layers.0.mlp.experts"].tolist())
    assert _routed(plain, _x(4, 7))[0] & gone
    with torch.no_grad():
        assert not torch.allclose(plain(_x(2, 5)).logits, model(_x(2, 5)).logits, atol=1e-4)


def test_reap_and_frequency_by_hand_on_four_experts():
    """One Mixtral block: softmax over the router's logits, the top 2 renormalised; REAP of expert e is the mean
    over the tokens routed to it of its weight times ||down_e(silu(gate_e h) * up_e h)||."""
    from prunelab.calibration.module_stats import routing_hooks
    from prunelab.calibration.observers import hooked

    model = _model("mixtral", num_hidden_layers=1)
    block = model.model.layers[0].mlp
    seen = []
    block.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, 32).double()))
    stats = {}
    x = _x(3, 4)
    with hooked(model, routing_hooks({"e": block.experts}, stats)):
        model(x)
    h = seen[0]
    probs = torch.softmax(h @ block.gate.weight.double().T, -1)
    top, idx = probs.topk(2, -1)
    top = top / top.sum(-1, keepdim=True)
    reap, routed = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    gu, down = block.experts.gate_up_proj.double(), block.experts.down_proj.double()
    for t in range(h.shape[0]):
        for slot in range(2):
            e = int(idx[t, slot])
            g, u = (gu[e] @ h[t]).chunk(2)
            out = down[e] @ (torch.nn.functional.silu(g) * u)
            reap[e] += top[t, slot] * out.norm()
            routed[e] += 1
    assert torch.equal(stats["e"].routed.cpu(), routed)
    assert torch.allclose(stats["e"].reap.cpu(), reap, rtol=1e-5)


def test_bad_expert_requests_are_one_sentence():
    with pytest.raises(ConfigError, match="no experts"):  # a dense model
        Pruner(_model("llama"), {"name": "transformer_units", "units": ["experts"], "expert_score": "criterion"},
               schedule="manual", sparsity=0.5, example_inputs=_x(1))
    model = _model("mixtral")  # 4 experts, top-2: keeping 1 cannot route a token to 2
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ConfigError, match="fewer than the 2 each token"):
        _pruned(model, "criterion", sparsity=0.75)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    with pytest.raises(ConfigError, match="expert_score"):
        Pruner(_model("mixtral"), {"name": "transformer_units", "units": ["experts"], "expert_score": "loud"},
               schedule="manual", sparsity=0.5)


# mixtures of experts transformers ships with no entry in FAMILIES, read from their experts (recognize_moe)
ZOO = {"qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24, "head_dim": 8},
       "olmoe": {"num_experts": 4, "num_experts_per_tok": 2, "eos_token_id": 2, "pad_token_id": 1},
       "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8, "sliding_window": 8},
       "phimoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
       "deepseek_v3": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
                       "moe_intermediate_size": 24, "first_k_dense_replace": 1, "q_lora_rank": 16,
                       "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
                       "num_hidden_layers": 3, "rope_scaling": None},
       "llama4_text": {"num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size_mlp": 64, "head_dim": 8},
       "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
       "minimax": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8}}


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_an_unlisted_mixture_of_experts_loses_half_its_experts_and_reloads(kind, tmp_path):
    """GPT-OSS (router bias, transposed experts), DeepSeek-V3 (a dense first block, a per-expert correction
    bias, routing in float32), Llama-4 (sigmoid of the top scores; its experts take pre-sorted tokens, so REAP
    is refused and the criterion ranks them) and the rest: routing-masked == shrunk == reloaded."""
    if kind not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {kind}")
    model = _model(kind, **ZOO[kind])
    score = "criterion" if kind == "llama4_text" else "reap"
    if kind == "llama4_text":
        with pytest.raises(ConfigError, match="expert_score criterion"):
            _pruned(_model(kind, **ZOO[kind]), "reap")
    p = _pruned(model, score)
    moe = [n for n in p.structure.removed(p.masks)]
    assert moe and all(len(v) == 2 for v in p.structure.removed(p.masks).values())
    small = shrink(model, p.masks, example_inputs=_x(1))[0]
    small.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(_x(3, 9)).logits, model(_x(3, 9)).logits, atol=1e-5)


def test_wanda_scores_each_expert_by_the_tokens_routed_to_it():
    """Wanda on fused experts: |W_e| times the input norms of the tokens routed to expert e (gate_up_proj: their
    hidden states; down_proj: act(gate) * up of them), half of every row, by hand for block 0; GPT-OSS's
    transposed, biased experts get no such statistics and stay dense with the reason."""
    model = _model("mixtral")
    experts = model.model.layers[0].mlp.experts
    seen = []
    handle = experts.register_forward_pre_hook(lambda m, args: seen.append((args[0].double(), args[1])))
    batches = [_x(4, s) for s in range(1, 3)]
    with torch.no_grad():
        for b in batches:
            model(b)
    handle.remove()
    gu, down = experts.gate_up_proj.detach().double().clone(), experts.down_proj.detach().double().clone()
    p = Pruner(model, "wanda", sparsity=0.5, schedule="manual")
    p.calibrate(batches)
    p.prune(0.5)
    for e in range(4):
        x = torch.cat([h[(i == e).any(-1)] for h, i in seen])
        g, u = (x @ gu[e].T).chunk(2, dim=-1)
        mid = torch.nn.functional.silu(g) * u
        for w, inputs, name in ((gu[e], x, "gate_up_proj"), (down[e], mid, "down_proj")):
            score = w.abs() * inputs.norm(dim=0)
            want = torch.ones_like(w, dtype=torch.bool)
            want.scatter_(1, score.argsort(dim=1)[:, : w.shape[1] // 2], False)
            assert torch.equal(p.masks[f"model.layers.0.mlp.experts.{name}"][e], want), (e, name)
    oss = _model("gpt_oss", **ZOO["gpt_oss"])
    q = Pruner(oss, "wanda", sparsity=0.5, schedule="manual")
    assert "per-expert statistics" in q.skipped["model.layers.0.mlp.experts.gate_up_proj"]


def test_a_run_removes_experts_recovers_by_distillation_and_still_shrinks(tmp_path):
    """The command line end to end: a small Mixtral trained, half its experts removed by REAP, retrained by
    distilling the dense model (the removed experts stay zero and unrouted while it trains), then shrunk."""
    import json

    from prunelab.cli import main

    over = ["model.name=hf:mixtral", "model.kwargs={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 48, "
            "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 16, num_local_experts: 4, "
            "num_experts_per_tok: 2}", "data.seq_len=16", "data.train_tokens=4000", "data.eval_tokens=2000",
            "data.calibration_tokens=2000", "train.epochs=1", "train.train_tokens=2000", "prune.method.units=[experts]",
            "prune.method.criterion=magnitude", "prune.method.samples=16", "prune.retrain.epochs=1",
            "prune.retrain.train_tokens=1000", "prune.distill={alpha: 0.5, temperature: 2}"]
    assert main(["run", "llama_pystdlib_units", *over, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("llama_pystdlib_units"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["shrunk"]["config"]["num_local_experts"] == 2
    assert [r["stage"] for r in summary["stages"]] == ["dense", "round_01"]
    assert abs(summary["shrunk"]["test_ppl"] - summary["pruned_ppl"]) < 1e-3 * summary["pruned_ppl"]
