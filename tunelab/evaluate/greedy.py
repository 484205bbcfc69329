"""Greedy decoding with the KV cache in which a finished row leaves the batch.

transformers' `generate` keeps decoding a row that has stopped (it appends padding) until every
row of the batch has stopped. In an evaluation that ends each answer at EOS or at the end of a
one-line answer, rows finish at very different steps, so a batch spends much of its time on
rows whose output is already known. `greedy_generate` takes the steps `generate` takes — one
forward pass with the cache per token, the same logits processors in the same order, argmax,
EOS and the caller's stopping criteria — and after each step drops the finished rows from the
tokens, the attention mask, the cache (`Cache.batch_select_indices`) and the per-row state of
tunelab's processors (their `keep_rows`). The result has `generate`'s shape: (B, T + new),
each row padded with `pad_id` after it stops, `new` the steps until the last row stopped.

`can_shrink` says when this applies: greedy, options limited to those handled here, every
given processor and stopping criterion able to narrow its per-row state (`keep_rows`; the
server's streaming criterion cannot, so serving keeps `generate`), a model
whose generation config adds no processor of its own and whose cache is a plain
`DynamicCache` (full or sliding-window attention layers). Everything else goes to `generate`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessorList, NoRepeatNGramLogitsProcessor
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

HANDLED = {"max_new_tokens", "do_sample", "logits_processor", "stopping_criteria",
           "no_repeat_ngram_size"}  # fmt: skip
# generation-config fields that make `generate` add processors of its own, with their neutral
# values: a model that sets any of them otherwise decodes through `generate`
NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
           "bad_words_ids": (None,), "sequence_bias": (None,), "min_length": (None, 0),
           "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
           "forced_eos_token_id": (None,), "suppress_tokens": (None,),
           "begin_suppress_tokens": (None,), "exponential_decay_length_penalty": (None,),
           "renormalize_logits": (None, False), "remove_invalid_values": (None, False),
           "guidance_scale": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
           "watermarking_config": (None,), "epsilon_cutoff": (None, 0.0)}  # fmt: skip


def can_shrink(model: nn.Module, options: dict) -> bool:
    """True when `greedy_generate` decodes exactly as `generate` would for these options."""
    if options.get("do_sample") or not set(options) <= HANDLED:
        return False
    given = [*(options.get("logits_processor") or []), *(options.get("stopping_criteria") or [])]
    if not all(hasattr(item, "keep_rows") for item in given):  # per-row state we cannot narrow
        return False
    config = getattr(model, "generation_config", None)
    if any(getattr(config, name, None) not in neutral for name, neutral in NEUTRAL.items()):
        return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    layers = DynamicCache(config=model.config).layers
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def greedy_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    logits_processor=None,
    stopping_criteria=None,
    no_repeat_ngram_size: int = 0,
    do_sample: bool = False,
) -> torch.Tensor:
    """(B, T + new): the left-padded prompts (B, T), then each row's greedy continuation up to
    and including its stop token, `pad_id` after it; finished rows leave the batch."""
    if do_sample:
        raise ValueError("greedy_generate decodes greedily (do_sample=False)")
    processors = LogitsProcessorList(
        [NoRepeatNGramLogitsProcessor(no_repeat_ngram_size)] if no_repeat_ngram_size else []
    )
    processors.extend(logits_processor or [])  # generate's order: its own first, then ours
    criteria = list(stopping_criteria or [])
    batch = input_ids.shape[0]
    device = input_ids.device
    new = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # the original row of each row still decoding
    stops = torch.tensor(stop_ids, device=device)
    cache = DynamicCache(config=model.config)
    tokens, mask, step_ids, taken = input_ids, attention_mask, input_ids, 0
    while taken < max_new_tokens:
        inputs = _model_inputs(model, step_ids, mask, cache)
        logits = model(**inputs).logits[:, -1, :].to(torch.float32)  # (b, V)
        scores = processors(tokens, logits)
        chosen = scores.argmax(dim=-1)  # (b,)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (b, T + taken + 1)
        new[rows, taken] = chosen
        taken += 1
        done = torch.isin(chosen, stops)
        for criterion in criteria:
            done = done | criterion(tokens, scores).to(device)
        keep = (~done).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < len(rows):  # finished rows leave: tokens, mask, cache, processor state
            rows, tokens, mask, chosen = rows[keep], tokens[keep], mask[keep], chosen[keep]
            cache.batch_select_indices(keep)
            for stateful in (*processors, *criteria):
                if hasattr(stateful, "keep_rows"):
                    stateful.keep_rows(keep.tolist())
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        step_ids = chosen[:, None]  # (b, 1)
    return torch.cat([input_ids, new[:, :taken]], dim=1)


def _model_inputs(
    model: nn.Module, step_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
) -> dict:
    """Forward arguments for one step: the new ids (b, t), the whole mask (b, T + taken),
    position ids as `generate` derives them from the mask (the new positions only), the cache
    and, where the model takes it, `logits_to_keep=1` (the head on the last position only)."""
    parameters = _forward_parameters(model)
    inputs = {"input_ids": step_ids, "attention_mask": mask, "use_cache": True}
    inputs["cache" if "cache" in parameters else "past_key_values"] = cache
    if "position_ids" in parameters:
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        inputs["position_ids"] = positions[:, -step_ids.shape[1] :]
    if "logits_to_keep" in parameters:
        inputs["logits_to_keep"] = 1
    return inputs


def _forward_parameters(model: nn.Module) -> set[str]:
    """Names the model's forward takes (a PEFT wrapper's: its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)
