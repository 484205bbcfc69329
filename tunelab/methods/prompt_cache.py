"""Cached generation for PEFT prompt-learning models (prompt tuning, p-tuning, prefix tuning).

With transformers 5 and peft 0.21, `PeftModel.generate` is wrong for these methods: the KV
cache reaches the model as `cache=` (no longer `past_key_values=`), so PEFT's generation hook
does not see it; prompt tuning re-inserts the virtual tokens at every cached step and prefix
tuning silently drops its prefix. Rather than patch PEFT's hook, we do its job once, up front,
and let the BASE model's own `generate` (KV cache included) run unmodified:

- virtual tokens (prompt tuning, p-tuning): the prompt becomes `inputs_embeds` with the V
  learned embeddings in front; transformers decodes from embeddings with its cache;
- prefix tuning: the learned keys and values fill a fresh `DynamicCache` of length V, which
  generation continues from as if the prefix were earlier tokens.

In both cases the attention mask gets V leading ones, so positions come out as in training:
the text starts at position V (position ids come from the mask), so prompts of any length
share a batch. Left padding must not sit between the virtual positions and the text where a
layer has a sliding window: transformers counts that window in cache slots, padding
included, so the virtual positions would drop out of the window early. Virtual tokens are
therefore put behind the padding; a prefix cannot be (it is the cache), so where the window
could cut, prompts of different lengths are decoded in separate calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftType
from torch import nn

SUPPORTED = (PeftType.PROMPT_TUNING, PeftType.P_TUNING, PeftType.PREFIX_TUNING)


def is_prompt_learning(model: nn.Module) -> bool:
    """True for a PEFT model whose active adapter adds virtual tokens or a KV prefix."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def generate_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    do_sample: bool = False,
    **decoding,
) -> torch.Tensor:
    """(B, T + new) tokens: the left-padded prompt (B, T) then its continuation, padded with
    `pad_id` after a row stops; decoded with the KV cache from a prompt-learning PeftModel."""
    config = model.active_peft_config
    if config.peft_type not in SUPPORTED:
        raise NotImplementedError(f"cached generation for {config.peft_type} is not implemented")
    base = model.get_base_model()
    batch = input_ids.shape[0]
    virtual = torch.ones(batch, config.num_virtual_tokens, dtype=attention_mask.dtype)
    options = {
        "attention_mask": torch.cat([virtual.to(attention_mask.device), attention_mask], dim=1),
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "use_cache": True,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        **decoding,
    }
    if config.peft_type == PeftType.PREFIX_TUNING:
        window = sliding_window(base.config)
        longest = config.num_virtual_tokens + input_ids.shape[1] + max_new_tokens
        if window is not None and longest > window and not attention_mask.all():
            return _by_length(model, input_ids, attention_mask, pad_id, **decoding, **{
                "max_new_tokens": max_new_tokens, "eos_ids": eos_ids, "do_sample": do_sample,
            })  # fmt: skip
        prefix = model.get_prompt(batch)  # DynamicCache: per layer (B, heads, V, head_dim)
        return base.generate(input_ids=input_ids, cache=prefix, **options)
    prompts = model.get_prompt(batch)  # (B, V, H)
    embeds = model.word_embeddings(input_ids)  # (B, T, H)
    embeds = torch.cat([prompts.to(embeds.dtype), embeds], dim=1)  # (B, V + T, H)
    order = options["attention_mask"].argsort(dim=1, stable=True)  # padding, virtual, text
    options["attention_mask"] = options["attention_mask"].gather(1, order)
    embeds = embeds.gather(1, order[..., None].expand_as(embeds))
    new_tokens = base.generate(inputs_embeds=embeds, **options)  # (B, new): embeds give no ids
    return torch.cat([input_ids, new_tokens], dim=1)


def sliding_window(config) -> int | None:
    """The attention window of a model whose layers (some or all) have one, else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)  # per layer where the config says
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def _by_length(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int, **options
) -> torch.Tensor:
    """generate_tokens on each group of equally long prompts (no padding), reassembled into
    (B, T + new): each row left-padded as given, then padded with `pad_id` after it stops."""
    rows: list[torch.Tensor] = [input_ids[0]] * input_ids.shape[0]
    padding = (attention_mask == 0).sum(dim=1)  # (B,): left padding of each row
    for pads in padding.unique().tolist():
        chosen = (padding == pads).nonzero().flatten()
        tokens = generate_tokens(
            model, input_ids[chosen, pads:], attention_mask[chosen, pads:], pad_id=pad_id,
            **options,
        )  # fmt: skip
        for index, row in zip(chosen.tolist(), tokens, strict=True):
            rows[index] = torch.cat([input_ids[index, :pads], row])
    width = max(len(row) for row in rows)
    return torch.stack([F.pad(row, (0, width - len(row)), value=pad_id) for row in rows])
