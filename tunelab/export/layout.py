"""What llama.cpp expects of each architecture in a GGUF file: the architecture name, the
hyperparameter keys, the tensor names (from the `gguf` library's own name map) and the two layout
changes its converter makes (llama.cpp's `convert_hf_to_gguf.py` is the reference):

- llama: q and k rows are reordered per head, from transformers' rotate-half RoPE layout to
  llama.cpp's interleaved pairs (rows [0..d/2) and [d/2..d) of a head become even and odd rows);
- gemma: transformers computes RMSNorm as x·(1 + w), llama.cpp as x·w, so every norm weight is
  stored as 1 + w; the embedding scale √hidden is applied by llama.cpp itself.

Only what both llama.cpp and transformers' GGUF reader carry is written; anything else (rope
scaling, extra biases, another activation) is refused with the reason, before any file exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import nn

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Layout:
    arch: gguf.MODEL_ARCH
    activations: tuple[str, ...]  # transformers hidden_act values llama.cpp computes the same way
    biases: tuple[str, ...] = ()  # GGUF tensors (without .bias) that may carry a bias
    permute_qk: bool = False
    norm_plus_one: bool = False


LAYOUTS: dict[str, Layout] = {
    "llama": Layout(gguf.MODEL_ARCH.LLAMA, ("silu",), permute_qk=True),
    "qwen2": Layout(gguf.MODEL_ARCH.QWEN2, ("silu",), biases=("attn_q", "attn_k", "attn_v")),
    "gemma": Layout(gguf.MODEL_ARCH.GEMMA, ("gelu_pytorch_tanh", "gelu"), norm_plus_one=True),
}


def layout_of(config) -> Layout:
    """The layout for a transformers config, or a one-line refusal naming what is unsupported."""
    model_type = config.model_type
    if model_type not in LAYOUTS:
        raise TunelabError(
            f"export: architecture {model_type!r} has no GGUF export here; "
            f"supported: {', '.join(LAYOUTS)}"
        )
    layout = LAYOUTS[model_type]
    activation = getattr(config, "hidden_activation", None) or config.hidden_act
    if activation not in layout.activations:
        raise TunelabError(f"export: {model_type} with activation {activation!r} is not supported")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default":
        raise TunelabError(f"export: RoPE scaling {rope_type!r} is not carried into the GGUF file")
    if model_type != "llama" and head_dim(config) != config.hidden_size // heads(config):
        raise TunelabError(f"export: {model_type} with head_dim != hidden/heads is not supported")
    return layout


def heads(config) -> int:
    return config.num_attention_heads


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def add_hyperparameters(writer: gguf.GGUFWriter, config, layout: Layout) -> None:
    """The `<arch>.*` keys llama.cpp reads to build the graph."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_vocab_size(config.vocab_size)
    if layout.arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_rope_dimension_count(head_dim(config))
    if layout.arch == gguf.MODEL_ARCH.GEMMA:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))


def gguf_tensors(model: nn.Module, layout: Layout) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in llama.cpp's layout) for every tensor of `model`, in order.

    A tied output head is not written (llama.cpp ties it when `output.weight` is absent)."""
    config = model.config
    names = gguf.get_tensor_name_map(layout.arch, config.num_hidden_layers)
    known = {gguf.TENSOR_NAMES[kind] for kind in gguf.MODEL_TENSORS[layout.arch]}
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        base, _, suffix = (name or "").rpartition(".")
        stem = base.split(".")[-1]
        if (
            name is None
            or _generic(base) not in known
            or (suffix == "bias" and stem not in layout.biases)
        ):
            raise TunelabError(
                f"export: {hf_name} is not part of the {config.model_type} GGUF layout written "
                "here (only tensors that llama.cpp and transformers' GGUF reader both load)"
            )
        yield name, _to_layout(name, tensor, config, layout)


def _generic(name: str) -> str:
    """'blk.3.attn_q' -> 'blk.{bid}.attn_q', the form of `gguf.TENSOR_NAMES`."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2:
        parts[1] = "{bid}"
    return ".".join(parts)


def _to_layout(name: str, tensor: torch.Tensor, config, layout: Layout) -> np.ndarray:
    data = tensor.detach().to(torch.float32).cpu().numpy()
    if layout.permute_qk and ".attn_q." in name:
        data = interleave_rope(data, config.num_attention_heads)
    elif layout.permute_qk and ".attn_k." in name:
        data = interleave_rope(data, config.num_key_value_heads)
    if layout.norm_plus_one and name.endswith("norm.weight"):
        data = data + 1.0
    return data


def interleave_rope(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """(n_heads·d, ...) q or k rows, per head from halves [x0..x(d/2-1), y0..] to pairs
    [x0, y0, x1, y1, ...]: the rotation pairs llama.cpp's llama RoPE expects next to each other."""
    shape = rows.shape
    per_head = rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])  # (H, 2, d/2, ...)
    return per_head.swapaxes(1, 2).reshape(shape)
