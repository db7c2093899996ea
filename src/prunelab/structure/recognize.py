"""Transformer layouts read from the modules themselves, for Hugging Face families :data:`.families.FAMILIES` does
not name (Granite, OLMo-2/3, SmolLM3, Cohere2, EXAONE-4, Ernie-4.5, Helium, SEED-OSS and the rest of 2026's
LLaMA-shaped decoders).

:func:`family_of` answers which layout a model has: its entry in FAMILIES, else the one read here.

A model is LLaMA-shaped when its config states ``hidden_size``, ``intermediate_size``, ``num_attention_heads`` and
``num_hidden_layers``, ``model.layers`` holds that many blocks, and every block has ``self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj`` as ``nn.Linear``. What each unit kind needs is then checked from the modules, and a
kind whose needs are not all met is refused with its reason (:attr:`.families.Family.refused`), never guessed:

- ``mlp``: the MLP holds nothing with parameters but its three projections (BitNet's ``ffn_sub_norm`` over the
  MLP width: refused);
- ``heads``: the config (or the attention module) states ``head_dim``, the config ``num_key_value_heads``; the attention holds nothing with
  parameters but q, k, v, o and norms over one head (an output gate, a norm over all heads together as in
  OLMo-2: refused);
- ``hidden``: every norm over the hidden size computes ``x / rms(x) * w`` with the config's ``rms_norm_eps``,
  checked numerically on random inputs (a LayerNorm or Gemma's ``1 + w``: refused), and the block holds no other
  module with parameters (an unknown reader of the stream would keep its full width);
- ``depth``: the block normalizes its input (``input_layernorm``) before attention, so a block whose output and
  down projections are zero adds nothing.

These are necessary conditions read from names; the sufficient one is the check every shrink already runs (the
float64 logits of the masked and the shrunk model compared: ShrinkError otherwise), which the zoo test exercises
on every family transformers ships.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import first_line
from .families import _LLAMA, FAMILIES, Family, _block_modules, _prefixed, has_module

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _rms_like(norm: nn.Module, width: int, eps: float | None) -> bool:
    """Whether ``norm`` computes ``x * rsqrt(mean(x^2) + eps) * weight`` with the config's ``eps``."""
    w = getattr(norm, "weight", None)
    own = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (width,) or eps is None or own != eps:
        return False
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0), dtype=w.dtype, device=w.device)
    with torch.no_grad():
        try:
            y = norm(x)
        except Exception:  # a norm with another signature is not the plain RMSNorm this cut knows
            return False
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, want, rtol=1e-4, atol=1e-5)


def family_of(model: nn.Module) -> Family | None:
    """The model's :class:`Family` when it is a Hugging Face model of a known layout with every named module
    present, or of an unlisted type whose blocks are LLaMA-shaped (:func:`.recognize.recognize`), else None
    (the caller falls back to a generic trace)."""
    config = getattr(model, "config", None)
    fam = FAMILIES.get(getattr(config, "model_type", None))
    if fam is None:
        return (recognize(model) or recognize_moe(model)) if config is not None else None
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not has_module(model, fam.layers) and has_module(model, f"{prefix}.{fam.layers}"):
        fam = _prefixed(fam, prefix + ".")
    try:
        blocks = model.get_submodule(fam.layers)
        for n in fam.embeds:
            model.get_submodule(n)
        for block in blocks:
            for n in _block_modules(fam):
                block.get_submodule(n)
    except (AttributeError, TypeError):
        return None
    return fam


def recognize(model: nn.Module, layers: str = "model.layers") -> Family | None:
    """A :class:`Family` for a LLaMA-shaped Hugging Face model of an unlisted type, with the unit kinds it cannot
    lose exactly refused by reason (see the module docstring); None when the model is not LLaMA-shaped."""
    config = getattr(model, "config", None)
    if config is None or not all(isinstance(getattr(config, f, None), int) for f in _FIELDS):
        return None
    root = layers.partition(".")[0]
    try:
        blocks = model.get_submodule(layers)
        embed = model.get_submodule(f"{root}.embed_tokens")
    except AttributeError:
        return None
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != config.num_hidden_layers or not len(blocks) \
            or not isinstance(embed, nn.Embedding):
        return None
    hidden = config.hidden_size
    try:
        if not all(isinstance(b.get_submodule(f"self_attn.{n}"), nn.Linear) for b in blocks for n in _ATTN) or \
                not all(isinstance(b.get_submodule(f"mlp.{n}"), nn.Linear) for b in blocks for n in _MLP):
            return None
    except AttributeError:
        return None
    # the config's head_dim, else the attention's own: most families read getattr(config, "head_dim", hidden //
    # heads), so stating it in the smaller config keeps the head size (where one does not, the shrink check says so)
    head_dim = getattr(config, "head_dim", None) or getattr(blocks[0].self_attn, "head_dim", None)
    known = {f"self_attn.{n}" for n in _ATTN} | {f"mlp.{n}" for n in _MLP}
    norms, head_norms, others = [], [], []
    for name, m in blocks[0].named_modules():
        if not name or not _own_params(m) or name in known:
            continue
        w = getattr(m, "weight", None)
        if "norm" in type(m).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1:
            if "." not in name and w.numel() == hidden:
                norms.append(name)
                continue
            if name.startswith("self_attn.") and head_dim and w.numel() == head_dim:
                head_norms.append(name)
                continue
        others.append(name)
    eps = getattr(config, "rms_norm_eps", None)
    final = f"{root}.norm"
    final_norm = final if has_module(model, final) else None
    refused = {}
    mlp = [n for n in others if n == "mlp" or n.startswith("mlp.")]
    attn = [n for n in others if n == "self_attn" or n.startswith("self_attn.")]
    if mlp:
        refused["mlp"] = f"its MLP holds {_what(mlp[0])}, which the cut does not know"
    if not isinstance(head_dim, int) or not isinstance(getattr(config, "num_key_value_heads", None), int):
        refused["heads"] = "neither its config nor its attention states head_dim and num_key_value_heads"
    elif attn:
        refused["heads"] = f"its attention holds {_what(attn[0])}, which the head cut does not know"
    stream = [b.get_submodule(n) for b in blocks for n in norms] + ([model.get_submodule(final)] if final_norm else [])
    if others:
        refused["hidden"] = f"its block holds {_what(others[0])}, which the hidden-size cut does not know"
    elif not stream or not all(_rms_like(m, hidden, eps) for m in stream):
        refused["hidden"] = "its norms are not the plain RMSNorm (x / rms(x) * w with rms_norm_eps) the cut scales"
    if "input_layernorm" not in norms:
        refused["depth"] = "it has no input_layernorm, so a block with zero outputs may not be the identity"
    for kind in ("mlp", "heads", "hidden"):
        if kind not in refused:
            why = _trial(model, kind, head_dim)
            if why:
                refused[kind] = why
    return Family(str(getattr(config, "model_type", type(model).__name__)), **{**_LLAMA, "norms": tuple(norms), "final_norm": final_norm,
                                          "head_dim_field": isinstance(head_dim, int),
                                          "shared_eps": tuple(head_norms)},
                  refused=tuple(refused.items()), recognized=True)



def _what(name: str) -> str:
    """A module's name as a sentence names it: 'mlp' holds parameters of its own, 'mlp.x' is a submodule."""
    return name if "." in name else f"parameters of its own in {name}"


def _trial(model: nn.Module, kind: str, head_dim: int | None) -> str | None:
    """Why transformers' own class, given the config with one ``kind`` unit fewer, does not build the shapes the
    cut will fill (None: it does). Built on the meta device: no memory, milliseconds per block. Helium and
    StableLM derive their head size or output projection from the width, not from head_dim: refused here
    instead of by the shrink check after pruning."""
    import copy

    c = copy.deepcopy(model.config)
    heads, hidden, inter = c.num_attention_heads, c.hidden_size, c.intermediate_size
    kv = getattr(c, "num_key_value_heads", None) or heads
    if kind == "mlp":
        c.intermediate_size = new = inter - 1
        want = {"mlp.gate_proj": (new, hidden), "mlp.up_proj": (new, hidden), "mlp.down_proj": (hidden, new)}
    elif kind == "heads":
        if kv < 2:
            return None  # one group per block: removing it is refused as cutting the model in two
        c.num_key_value_heads, c.num_attention_heads, c.head_dim = kv - 1, heads // kv * (kv - 1), head_dim
        q, k = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
        want = {"self_attn.q_proj": (q, hidden), "self_attn.k_proj": (k, hidden), "self_attn.v_proj": (k, hidden),
                "self_attn.o_proj": (hidden, q)}
    else:
        new = hidden - 1
        c.hidden_size, c.head_dim = new, head_dim
        want = {"self_attn.q_proj": (heads * head_dim, new), "self_attn.o_proj": (new, heads * head_dim),
                "mlp.gate_proj": (inter, new), "mlp.down_proj": (new, inter)}
    try:
        with torch.device("meta"):
            small = type(model)(c)
        block = small.get_submodule("model.layers")[0]
        got = {n: tuple(block.get_submodule(n).weight.shape) for n in want}
    except Exception as exc:  # a config check of the family's own (DiffLlama: an even number of kv heads)
        return f"transformers cannot build its config with fewer {kind} units ({first_line(exc, 100)})"
    wrong = [n for n in want if got[n] != want[n]]
    if wrong:
        return (f"with fewer {kind} units its class builds {wrong[0]} as {list(got[wrong[0]])}, not "
                f"{list(want[wrong[0]])} (it derives that width from another field)")
    return None


_MOE = ("mlp", "feed_forward", "block_sparse_moe")
_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")


def recognize_moe(model: nn.Module, layers: str = "model.layers") -> Family | None:
    """An experts-only :class:`Family` for a Hugging Face mixture of experts of an unlisted type (Qwen3-MoE, OLMoE,
    GPT-OSS, PhiMoE, DeepSeek-V3, Llama-4, GraniteMoE, MiniMax, ...): blocks under ``model.layers`` whose
    ``mlp`` / ``feed_forward`` / ``block_sparse_moe`` holds a fused ``experts`` module (3-D ``gate_up_proj``) and
    a router (``gate`` or ``router``) with one weight row per expert, the same names in every MoE block (dense
    blocks among them have no units), and a config field stating the expert count. Only ``experts`` are offered;
    the other kinds are refused by reason. None when the model is not such a mixture of experts."""
    config = getattr(model, "config", None)
    try:
        blocks = model.get_submodule(layers)
    except AttributeError:
        return None
    if config is None or not isinstance(blocks, nn.ModuleList) or not isinstance(getattr(config, "hidden_size", None), int):
        return None
    found = set()
    for block in blocks:
        for moe in _MOE:
            for router in ("gate", "router"):
                e, r = f"{moe}.experts", f"{moe}.{router}"
                if has_module(block, e) and has_module(block, r) and isinstance(
                        getattr(block.get_submodule(e), "gate_up_proj", None), torch.Tensor):
                    found.add((r, e))
    if len(found) != 1:
        return None
    router, experts = found.pop()
    n = next(int(b.get_submodule(experts).gate_up_proj.shape[0]) for b in blocks if has_module(b, experts))
    field = next((f for f in _COUNT_FIELDS if getattr(config, f, None) == n), None)
    if field is None:
        return None
    name = str(getattr(config, "model_type", type(model).__name__))
    refused = {k: f"its layout was read from its experts only, so {k} units are not read yet"
               for k in ("mlp", "heads", "hidden", "depth")}
    if (getattr(config, "n_group", None) or 1) > 1:  # DeepSeek-V3's group-limited routing
        refused["experts"] = (f"it routes within {config.n_group} groups of experts (n_group), which removing "
                              "experts would unbalance")
    root = layers.partition(".")[0]
    return Family(name, layers=layers, embeds=(f"{root}.embed_tokens",),
                  final_norm=f"{root}.norm" if has_module(model, f"{root}.norm") else None, up=(router,), down=None,
                  norms=(), o="", experts=experts, experts_only=True,
                  fields=(("experts", field), ("hidden", "hidden_size"), ("depth", "num_hidden_layers")),
                  refused=tuple(refused.items()), recognized=True)
