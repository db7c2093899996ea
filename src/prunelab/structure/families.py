"""The block layouts of Hugging Face transformers whose units of structure are read from their modules.

A :class:`Family` names, relative to one decoder block, the modules that read the residual stream (q, k, v and
the MLP's up-side projections), the modules that write it (the attention's output and the MLP's down
projection), the norms over the hidden size, and, from the model root, the blocks, the embeddings and the final
norm; and which config fields hold each width. Written by hand because these names are the architectures'
own (transformers has no machine-readable description of which module couples with which), and because a
generic trace of these models (Torch-Pruning's graph) did not finish in 100-300 s on two-block models with
the cache on: the module structure needs none, and :func:`check_layout` runs one batch to confirm every named
module is called with the width the config states.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, first_line
from ..inputs import Inputs, call


@dataclass(frozen=True)
class Family:
    """One block layout (see the module docstring); names are relative to a block unless they say otherwise."""

    name: str
    layers: str                       # the ModuleList of blocks, from the model root
    embeds: tuple[str, ...]           # embeddings whose columns are the hidden size (token, position), from the root
    final_norm: str | None            # from the root (None: the stream has no final norm)
    up: tuple[str, ...]               # MLP projections whose output rows are the MLP channels
    down: str | None                  # the MLP projection whose input columns are the MLP channels
    norms: tuple[str, ...]            # norms over the hidden size inside a block
    o: str                            # the attention's output projection
    q: str | None = None              # separate q, k, v projections ...
    k: str | None = None
    v: str | None = None
    qkv: str | None = None            # ... or one fused projection, q then k then v (GPT-2's c_attn)
    norm: str = "rms"                 # "rms" (exact hidden-size cut), "layer" or "gemma" (gain 1 + w)
    up_chunks: int = 1                # a fused up-side projection's chunks (Phi-3's gate_up_proj: 2)
    transposed: bool = False          # weights stored (in, out): Hugging Face Conv1D
    fields: tuple[tuple[str, str], ...] = ()  # unit kind -> config field of its width
    head_dim_field: bool = False      # the config states head_dim apart from hidden_size / heads
    pre_norm: str | None = None       # a config flag that must be true for depth (OPT's do_layer_norm_before)
    post_norm: bool = False           # every block normalizes after its residual add (BERT): no depth
    # a mixture-of-experts block's experts module, whose fused 3-D tensors gate_up_proj (E, 2I, H) and
    # down_proj (E, H, I) read and write the stream (Mixtral); its router is then the block's only ``up``
    experts: str | None = None
    # norms over something else than the hidden size that share its eps config field (Qwen3's per-head q/k
    # norms): the hidden-size cut scales that eps, which would change them (measured: 1.0e-5 on the logits of
    # a 2-block Qwen3 at half the width), so the cut is refused
    shared_eps: tuple[str, ...] = ()
    # unit kinds this layout cannot lose exactly, with the reason (a layout read from the modules, :mod:`.recognize`)
    refused: tuple[tuple[str, str], ...] = ()
    recognized: bool = False          # read from the modules, not listed in FAMILIES
    experts_only: bool = False        # only the router and experts are read (:func:`.recognize.recognize_moe`);
    # blocks without them (DeepSeek-V3's first dense blocks, Llama-4's interleaved ones) have no units

    @property
    def no_hidden(self) -> str | None:
        """Why the hidden size cannot be cut exactly (None: it can)."""
        if self.norm == "layer":
            return "its LayerNorm's mean and variance change when a channel goes"
        if self.norm == "gemma":
            return "it scales its embeddings by sqrt(hidden_size) and its norms' gain is 1 + w, which the cut would change"
        if self.shared_eps:
            return f"its {self.shared_eps[0]} norm shares rms_norm_eps, which the cut must scale"
        return None

    def field(self, kind: str) -> str:
        return dict(self.fields)[kind]


_LLAMA = dict(layers="model.layers", embeds=("model.embed_tokens",), final_norm="model.norm",
              q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
              up=("mlp.gate_proj", "mlp.up_proj"), down="mlp.down_proj",
              norms=("input_layernorm", "post_attention_layernorm"), norm="rms", head_dim_field=True,
              fields=(("mlp", "intermediate_size"), ("heads", "num_attention_heads"), ("kv", "num_key_value_heads"),
                      ("hidden", "hidden_size"), ("depth", "num_hidden_layers")))

FAMILIES: dict[str, Family] = {
    **{t: Family(t, **_LLAMA) for t in ("llama", "mistral", "qwen2")},
    "qwen3": Family("qwen3", **_LLAMA, shared_eps=("self_attn.q_norm", "self_attn.k_norm")),
    **{t: Family(t, **{**_LLAMA, "norm": "gemma", "shared_eps": ("self_attn.q_norm",) if t == "gemma3_text" else (),
                       "norms": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                 "post_feedforward_layernorm")}) for t in ("gemma2", "gemma3_text")},
    "gemma": Family("gemma", **{**_LLAMA, "norm": "gemma"}),
    "phi3": Family("phi3", **{**_LLAMA, "q": None, "k": None, "v": None, "qkv": "self_attn.qkv_proj",
                              "up": ("mlp.gate_up_proj",), "up_chunks": 2}),
    # Mixtral: attention, hidden size, depth and whole experts (:mod:`.experts`); an expert's channels are not a unit
    "mixtral": Family("mixtral", **{**_LLAMA, "up": ("mlp.gate",), "down": None, "experts": "mlp.experts",
                                    "fields": _LLAMA["fields"] + (("experts", "num_local_experts"),)}),
    # Qwen2-MoE: routed experts as Mixtral's, plus a shared expert (an MLP, gated by a 1-row Linear) that reads
    # and writes the stream; every block sparse (decoder_sparse_step 1, no mlp_only_layers), else no layout
    "qwen2_moe": Family("qwen2_moe", **{**_LLAMA, "up": ("mlp.gate", "mlp.shared_expert.gate_proj",
                                                         "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"),
                                        "down": "mlp.shared_expert.down_proj", "experts": "mlp.experts",
                                        "fields": _LLAMA["fields"] + (("experts", "num_experts"),)}),
    "gpt2": Family("gpt2", layers="transformer.h", embeds=("transformer.wte", "transformer.wpe"),
                   final_norm="transformer.ln_f", qkv="attn.c_attn", o="attn.c_proj", up=("mlp.c_fc",),
                   down="mlp.c_proj", norms=("ln_1", "ln_2"), norm="layer", transposed=True,
                   fields=(("mlp", "n_inner"), ("hidden", "n_embd"), ("depth", "n_layer"), ("heads", "n_head"))),
    # GPT-NeoX interleaves q, k and v per head in its fused projection; its heads are refused anyway (the config
    # derives the head size from the width), so the fused projection serves as the stream's reader only
    "gpt_neox": Family("gpt_neox", layers="gpt_neox.layers", embeds=("gpt_neox.embed_in",),
                       final_norm="gpt_neox.final_layer_norm", qkv="attention.query_key_value", o="attention.dense",
                       up=("mlp.dense_h_to_4h",), down="mlp.dense_4h_to_h",
                       norms=("input_layernorm", "post_attention_layernorm"), norm="layer",
                       fields=(("mlp", "intermediate_size"), ("hidden", "hidden_size"),
                               ("depth", "num_hidden_layers"), ("heads", "num_attention_heads"))),
    # BERT normalizes after each residual add and derives the head size from the width: MLP channels only. Its
    # names are the encoder's (BertModel); a model with a head (BertForMaskedLM ...) is found under its prefix
    "bert": Family("bert", layers="encoder.layer", embeds=("embeddings.word_embeddings",
                                                          "embeddings.position_embeddings",
                                                          "embeddings.token_type_embeddings"),
                   final_norm=None, q="attention.self.query", k="attention.self.key", v="attention.self.value",
                   o="attention.output.dense", up=("intermediate.dense",), down="output.dense",
                   norms=("attention.output.LayerNorm", "output.LayerNorm"), norm="layer", post_norm=True,
                   fields=(("mlp", "intermediate_size"), ("hidden", "hidden_size"), ("depth", "num_hidden_layers"),
                           ("heads", "num_attention_heads"))),
    "opt": Family("opt", layers="model.decoder.layers",
                  embeds=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
                  final_norm="model.decoder.final_layer_norm", q="self_attn.q_proj", k="self_attn.k_proj",
                  v="self_attn.v_proj", o="self_attn.out_proj", up=("fc1",), down="fc2",
                  norms=("self_attn_layer_norm", "final_layer_norm"), norm="layer", pre_norm="do_layer_norm_before",
                  fields=(("mlp", "ffn_dim"), ("hidden", "hidden_size"), ("depth", "num_hidden_layers"),
                          ("heads", "num_attention_heads"))),
}


def has_module(model: nn.Module, name: str) -> bool:
    """Whether ``model`` has a submodule of that dotted name."""
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _prefixed(fam: Family, pre: str) -> Family:
    """``fam`` with its root-relative names under ``pre`` (a task model around the base model)."""
    from dataclasses import replace

    return replace(fam, layers=pre + fam.layers, embeds=tuple(pre + e for e in fam.embeds),
                   final_norm=pre + fam.final_norm if fam.final_norm else None)


def _block_modules(fam: Family) -> tuple[str, ...]:
    if fam.experts_only:
        return (fam.up[0], fam.experts)
    attn = (fam.qkv,) if fam.qkv else (fam.q, fam.k, fam.v)
    return attn + (fam.o,) + fam.up + tuple(m for m in (fam.down, fam.experts) if m) + fam.norms


def attention_shape(model: nn.Module, fam: Family) -> tuple[int, int, int]:
    """(query heads, key-value groups, head size) from the model's config."""
    c = model.config
    heads = int(getattr(c, fam.field("heads")))
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    hidden = int(getattr(c, fam.field("hidden")))
    head_dim = getattr(c, "head_dim", None) if fam.head_dim_field else None
    return heads, kv, int(head_dim or hidden // heads)


def check_layout(model: nn.Module, fam: Family, example_inputs: Inputs) -> None:
    """ConfigError in one sentence unless one forward pass on ``example_inputs`` calls every module the layout
    names, each block's readers with inputs of the hidden size the config states (checked once, as the
    calibration pipeline checks its chain, then trusted)."""
    hidden = int(getattr(model.config, fam.field("hidden")))
    blocks = model.get_submodule(fam.layers)
    readers = ((fam.qkv,) if fam.qkv else (fam.q, fam.k, fam.v)) + fam.up
    seen: dict[str, Any] = {}
    handles = []
    present = [[n for n in _block_modules(fam) if not fam.experts_only or has_module(b, n)] for b in blocks]
    for i, block in enumerate(blocks):
        for n in present[i]:
            def hook(m, args, _n=f"{fam.layers}.{i}.{n}", _r=n in readers):
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                seen[_n] = x.shape[-1] if (x is not None and _r) else None
            handles.append(block.get_submodule(n).register_forward_pre_hook(hook))
    was, cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False
    try:
        with torch.no_grad():
            call(model, example_inputs)
    except Exception as exc:  # a user's inputs; one sentence
        raise ConfigError(f"the model rejected the example inputs: {first_line(exc, 160)}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        model.config.use_cache = cache
    missing = [n for i in range(len(blocks)) for n in (f"{fam.layers}.{i}.{m}" for m in present[i]) if n not in seen]
    if missing:
        raise ConfigError(f"this {fam.name} model does not run as its layout says: {missing[0]} was never called "
                          "(a modified block?); its units of structure cannot be read from its modules")
    wrong = [n for n, w in seen.items() if w is not None and w != hidden]
    if wrong:
        raise ConfigError(f"this {fam.name} model does not run as its layout says: {wrong[0]} reads inputs of "
                          f"width {seen[wrong[0]]}, not the config's hidden size {hidden}")
