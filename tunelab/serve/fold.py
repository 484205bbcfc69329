"""Joining prompts folded into a decoding step: one forward instead of a step and a prefill.

The forward runs as N one-token rows: the running batch's last tokens, then every new token of
the joining prompts, each with its own position id, so linears, norms and rotary embeddings (and
a mixed batch's per-row deltas, per token) need nothing new. Only attention knows the groups
(`Fold`, set around the forward): the decoding rows attend to their cache, to which their new
keys and values are appended as `DynamicLayer.update` does; the prompt tokens are gathered into
(prompts, length), left-padded, each prompt's new tokens right behind its own cached prefix
(the `PrefixCache`'s, of any length, none for a prompt-tuning row, whose new tokens start with
its virtual ones), and attend causally to those columns. Their keys and values, prefix
included, come back per layer as the joiners' cache. `benchmarks/profile_serve_fold.py`
measured the saving (442 → 322 ms for a 7-row step and a 2-prompt prefill on SmolLM2-135M).

Folding needs an attention that calls `attention_interface(module, q, k, v, mask, scaling=...)`
with the layer's `layer_idx` (transformers' Llama-style models) on the sdpa implementation:
`fold_ok` says when; views set to "tunelab_fold" use plain sdpa whenever no fold is active.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NAME = "tunelab_fold"
FOLDABLE = {"llama", "qwen2", "qwen3", "smollm3"}  # decoder families with that attention
_active = threading.local()
_installed: weakref.WeakSet = weakref.WeakSet()  # models attending through `attention`


@dataclass
class Fold:
    """One folded forward's groups: `rows` decoding rows (their cache `layers`, mask `mask` with
    the new column), then the prompts laid out in (prompts, length) columns: `where` the row of
    each new token, -1 elsewhere; `seen` True where a column holds a cached prefix token or a
    new one; `prefix` per layer the (keys, values) of the cached prefixes in their columns,
    zeros elsewhere, each (prompts, heads, length, dim), or None when no prompt has one."""

    layers: list  # the running batch's DynamicLayers
    mask: torch.Tensor  # (rows, L + 1) bool
    where: torch.Tensor  # (prompts, length) long
    seen: torch.Tensor  # (prompts, length) bool
    prefix: list | None = None
    keys: list = field(default_factory=list)  # per layer: the prompts' keys (prompts, H, T, D)
    values: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = self.mask.shape[0]
        flat = self.where.flatten()
        self.source = flat.clamp(min=0)  # other columns read row 0, then hidden or replaced
        self.slots = (flat >= 0).nonzero().squeeze(1)
        self.targets = flat[self.slots]
        self.new = (self.where >= 0)[:, None, :, None]  # (prompts, 1, T, 1)
        length = self.where.shape[1]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        eye = torch.eye(length, dtype=torch.bool)  # no query row without a key: no NaN
        self.prompt_mask = (causal[None] & self.seen[:, None, :] | eye[None])[:, None]


def fold_ok(model) -> bool:
    """True when `model`'s attention layers take the folded attention (see the docstring)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in FOLDABLE
            and getattr(config, "_attn_implementation", None) in ("sdpa", NAME))  # fmt: skip


def install(model) -> None:
    """Make `model` (a view: its configs are its own) attend through `attention`; once per
    model (every batch of a view calls it)."""
    if model in _installed:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _installed.add(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = NAME


class folding:
    """`with folding(fold):` the forwards of this thread attend in `fold`'s groups."""

    def __init__(self, fold: Fold) -> None:
        self.fold = fold

    def __enter__(self) -> Fold:
        _active.fold = self.fold
        return self.fold

    def __exit__(self, *exc) -> None:
        _active.fold = None


def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """sdpa, or with a fold active, attention in its groups; query/key/value (N, heads, 1, dim)."""
    fold = getattr(_active, "fold", None)
    if fold is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, **kwargs)  # fmt: skip
    rows, layer = fold.rows, fold.layers[module.layer_idx]
    layer.keys = torch.cat([layer.keys, key[:rows]], dim=2)
    layer.values = torch.cat([layer.values, value[:rows]], dim=2)
    out = torch.empty_like(query)
    out[:rows] = F.scaled_dot_product_attention(
        query[:rows], layer.keys, layer.values, attn_mask=fold.mask[:, None, None, :],
        scale=scaling, enable_gqa=True,
    )  # fmt: skip
    queries, keys, values = (_gather(fold, tensor) for tensor in (query, key, value))
    if fold.prefix:
        before_keys, before_values = fold.prefix[module.layer_idx]
        keys = torch.where(fold.new, keys, before_keys)
        values = torch.where(fold.new, values, before_values)
    fold.keys.append(keys)
    fold.values.append(values)
    prompts = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=fold.prompt_mask, scale=scaling, enable_gqa=True
    )
    flat = prompts.transpose(1, 2).reshape(-1, query.shape[1], query.shape[-1])
    out[fold.targets] = flat[fold.slots].unsqueeze(2)
    return out.transpose(1, 2), None


def _gather(fold: Fold, tensor: torch.Tensor) -> torch.Tensor:
    """(N, heads, 1, dim) -> (prompts, heads, length, dim) by `fold.where`."""
    picked = tensor[fold.source].squeeze(2)
    return picked.reshape(*fold.where.shape, tensor.shape[1], -1).transpose(1, 2)
