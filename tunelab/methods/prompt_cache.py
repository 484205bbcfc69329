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
the text starts at position V. Left padding then sits between the virtual tokens and the text
and is masked (position ids come from the mask), so prompts of any length share a batch.
"""

from __future__ import annotations

import torch
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
        prefix = model.get_prompt(batch)  # DynamicCache: per layer (B, heads, V, head_dim)
        return base.generate(input_ids=input_ids, cache=prefix, **options)
    prompts = model.get_prompt(batch)  # (B, V, H)
    embeds = model.word_embeddings(input_ids)  # (B, T, H)
    embeds = torch.cat([prompts.to(embeds.dtype), embeds], dim=1)  # (B, V + T, H)
    new_tokens = base.generate(inputs_embeds=embeds, **options)  # (B, new): embeds give no ids
    return torch.cat([input_ids, new_tokens], dim=1)
