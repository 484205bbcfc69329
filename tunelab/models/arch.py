"""Architecture facts in one table: where the decoder blocks, projections, embeddings and
head live for each model family. Methods ask this table instead of guessing module names."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tunelab.errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    family: str
    layers: str  # dotted path from the CausalLM to the ModuleList of decoder blocks
    attention: str  # attribute of a block holding the attention sublayer
    mlp: str  # attribute of a block holding the MLP sublayer
    attention_projections: tuple[str, ...]  # linear layers inside the attention sublayer
    mlp_projections: tuple[str, ...]  # linear layers inside the MLP sublayer
    embeddings: str  # dotted path to the token embedding
    final_norm: str  # dotted path to the final layer norm
    head: str = "lm_head"
    supports_packing: bool = True  # per-example attention from reset position_ids
    has_biases: bool = False  # do its linear layers carry bias terms
    gated_mlp: bool = False  # MLP = down(act(gate(x)) * up(x)) over mlp_projections in that order

    @property
    def projections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.attention_projections + self.mlp_projections))


_LLAMA_LIKE = dict(
    layers="model.layers",
    attention="self_attn",
    mlp="mlp",
    attention_projections=("q_proj", "k_proj", "v_proj", "o_proj"),
    mlp_projections=("gate_proj", "up_proj", "down_proj"),
    embeddings="model.embed_tokens",
    final_norm="model.norm",
    gated_mlp=True,
)

ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(family="llama", **_LLAMA_LIKE),
    "qwen2": ArchSpec(family="qwen2", **_LLAMA_LIKE),  # q/k/v carry biases, o/MLP do not
    "gemma": ArchSpec(family="gemma", **_LLAMA_LIKE),
    # Gemma 3 and Mistral have sliding-window layers (the packed attention honours them);
    # Gemma's MLPs are gated with GELU, so the fused SwiGLU path passes them by. Gemma 2 is not
    # here: transformers runs it only with eager attention (its logits are soft-capped).
    "gemma3_text": ArchSpec(family="gemma3", **_LLAMA_LIKE),
    "mistral": ArchSpec(family="mistral", **_LLAMA_LIKE),
    "bloom": ArchSpec(
        family="bloom",
        layers="transformer.h",
        attention="self_attention",
        mlp="mlp",
        attention_projections=("query_key_value", "dense"),
        mlp_projections=("dense_h_to_4h", "dense_4h_to_h"),
        embeddings="transformer.word_embeddings",
        final_norm="transformer.ln_f",
        supports_packing=False,  # ALiBi takes no position_ids: pad and group by length
        has_biases=True,
    ),
    "gpt2": ArchSpec(
        family="gpt2",
        layers="transformer.h",
        attention="attn",
        mlp="mlp",
        attention_projections=("c_attn", "c_proj"),
        mlp_projections=("c_fc", "c_proj"),
        embeddings="transformer.wte",
        final_norm="transformer.ln_f",
        has_biases=True,
    ),
}


def _base(model: nn.Module) -> nn.Module:
    """Unwrap PEFT wrappers down to the transformers CausalLM."""
    while hasattr(model, "get_base_model") or type(model).__name__ in {"PeftModel", "LoraModel"}:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model.model
        if inner is model:
            break
        model = inner
    return model


def arch_of(model: nn.Module) -> ArchSpec:
    model_type = getattr(_base(model).config, "model_type", None)
    if model_type not in ARCHS:
        raise ModelError(
            f"architecture {model_type!r} is not in the table; known: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[model_type]


def get_submodule(model: nn.Module, dotted: str) -> nn.Module:
    return _base(model).get_submodule(dotted)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks, bottom (index 0) to top."""
    return get_submodule(model, arch_of(model).layers)


def layer_prefix(model: nn.Module) -> str:
    """Dotted name prefix of the decoder blocks as seen from `model` itself (for name matching)."""
    spec = arch_of(model)
    target = decoder_layers(model)
    for name, module in model.named_modules():
        if module is target:
            return name
    return spec.layers
