"""What the transformer-unit tests share: a tiny model of a known family, token ids, a pruned model, and the
inputs a module of every block reads (not a test module: imported by the tests beside it)."""
import torch
from prunelab import Pruner

V = 48


def tiny(kind: str = "llama", **kw) -> torch.nn.Module:
    """A 3-block, 32-wide model of ``kind`` (4 heads in 2 key-value groups, MLP 48), seeded, cache off, in eval."""
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(kind, vocab_size=V, hidden_size=32, intermediate_size=48,
                                               num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
                                               **kw)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model.eval()


def ids(n=2, seed=0):
    return torch.randint(0, V, (n, 10), generator=torch.Generator().manual_seed(seed))


def pruned(model, units, criterion="magnitude", sparsity=0.5, **kw):
    """``model`` pruned once by ``transformer_units`` (calibrated on 3 batches when the method asks); the Pruner."""
    method = {"name": "transformer_units", "units": units, "criterion": criterion, **kw}
    pruner = Pruner(model, method, schedule="manual", sparsity=sparsity, example_inputs=ids(1))
    if pruner.needs.calibration is not None:
        pruner.calibrate([ids(4, s) for s in range(3)])
    pruner.prune(sparsity, final=True)
    return pruner


def block_inputs(model, module: str, batches) -> dict[int, torch.Tensor]:
    """{block: (tokens, columns) float64} the inputs the submodule ``module`` of each block reads over ``batches``."""
    seen = {i: [] for i in range(len(model.model.layers))}
    hooks = [layer.get_submodule(module).register_forward_hook(
        lambda m, a, o, i=i: seen[i].append(a[0].reshape(-1, a[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {i: torch.cat(v).double() for i, v in seen.items()}
