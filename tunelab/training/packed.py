"""Packed rows done right: per-example attention without an (L, L) mask, and a prompt prefix
that the examples of a row share stored and computed once.

A packed row (1, L) holds several examples whose position_ids restart at 0. Under "sdpa",
transformers turns the resets into a block-diagonal (L, L) mask; a masked SDPA computes all L²
scores, on CPU in the slow math kernel that also keeps the (H, L, L) probabilities for
backward. Within `packed_attention(model)` the model runs under "tunelab_packed_sdpa": each
example attends to itself with `is_causal=True` (the flash kernel), so the work is the sum of
the examples' squares. Anything that is not a packed row falls through to plain SDPA.

Shared prefixes. Chat-templated data repeat the same opening in every example (SmolLM2's
default system prompt and a fixed instruction: 39 of the ~132 tokens of the Xhosa examples).
A causal model computes the same hidden states for those tokens in every example, so
`share_prefix` stores them once: [P S1 P S2 ...] becomes [P S1 S2 ...] with S_i's positions
continuing from len(P), and the attention lets each S_i see P and itself. Outputs, loss and
gradients are those of the full row (P's activations get the summed gradient of every example
that reads them); only the duplicated work is gone. Such a row means something only to this
attention, so the loss compacts a row only while the model runs under it (`shares_prefixes`).

Prefix tuning. Its V learned keys and values per layer come in as a KV cache in front of the
row (`prefix_tuning_row`): the keys are then V longer than the queries, every example's
positions start at V, and each example attends to the V cached keys and itself — exactly one
example per row behind its own prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.compat import (
    attn_implementation,
    fast_paths_enabled,
    register_attention,
    repeat_kv,
    sdpa_attention_forward,
    set_attn_implementation,
)
from tunelab.data.types import IGNORE

PACKED_SDPA = "tunelab_packed_sdpa"  # per-example attention
SHARED_SDPA = "tunelab_packed_shared_sdpa"  # the same, and the loss compacts shared prefixes
MIN_SHARED = 8  # shared tokens below which compacting a row is not worth it


@contextmanager
def packed_attention(model: nn.Module, share_prefixes: bool = True) -> Iterator[None]:
    """Within the block, a model that uses "sdpa" runs packed rows example by example."""
    if attn_implementation(model) != "sdpa":
        yield
        return
    name = SHARED_SDPA if share_prefixes else PACKED_SDPA
    register_attention(name, packed_sdpa_forward)
    set_attn_implementation(model, name)
    try:
        yield
    finally:
        set_attn_implementation(model, "sdpa")


def shares_prefixes(model: nn.Module) -> bool:
    """Is `model` inside `packed_attention(model, share_prefixes=True)`?"""
    return attn_implementation(model) == SHARED_SDPA


# ---------------------------------------------------------------- attention


def packed_sdpa_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, L, D)
    key: torch.Tensor,  # (B, H_kv, L, D)
    value: torch.Tensor,  # (B, H_kv, L, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Per-example attention for a packed row; plain SDPA otherwise. Output (B, L, H, D).

    Sliding-window layers (Mistral, Gemma 2 and 3) see at most the `window` latest positions,
    counted in each example's own positions, as transformers' mask does."""
    causal = getattr(module, "is_causal", True)
    layout = _row_layout(query, key, kwargs.get("position_ids")) if causal else None
    if layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths, offsets = layout
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # CPU: faster than enable_gqa
    cached = key.shape[2] - query.shape[2]  # a prefix-tuning prefix every example sees
    prefix_key, prefix_value = key[:, :, :cached], value[:, :, :cached]
    key, value = key[:, :, cached:], value[:, :, cached:]
    options = {"dropout_p": dropout, "scale": scaling}
    fixed = not any(offsets) and not cached and lengths.count(lengths[0]) == len(lengths)
    if fixed and (window is None or lengths[0] <= window):  # fixed-length data
        # (1, H, n*W, D) -> (n, H, W, D): one batched call, no splitting
        batched = [x[0].unflatten(1, (len(lengths), lengths[0])).transpose(0, 1)
                   for x in (query, key, value)]  # fmt: skip
        out = _attend(*batched, is_causal=True, **options)
        return out.transpose(1, 2).reshape(1, query.shape[2], query.shape[1], query.shape[3]), None
    pieces = list(zip(*(x.split(lengths, dim=2) for x in (query, key, value)), strict=True))
    # the keys and values a segment sees ahead of its own, by its offset, joined once a layer:
    # the cached prefix, and for an example continuing the shared prefix segment 0 after it
    ahead = {0: (prefix_key, prefix_value)}
    for offset in {offset for offset in offsets if offset}:  # at most one (`_row_layout`)
        ahead[offset] = (torch.cat([prefix_key, pieces[0][1]], dim=2),
                         torch.cat([prefix_value, pieces[0][2]], dim=2))  # fmt: skip
    outputs = []
    for (q, k, v), offset in zip(pieces, offsets, strict=True):
        if offset == 0 and not cached and (window is None or q.shape[2] <= window):
            outputs.append(_attend(q, k, v, is_causal=True, **options))  # an example alone
            continue
        seen_key, seen_value = ahead[offset]
        if seen_key.shape[2]:
            k, v = torch.cat([seen_key, k], dim=2), torch.cat([seen_value, v], dim=2)
        sees = _visible(cached + offset, q.shape[2], window, q.device)
        outputs.append(_attend(q, k, v, attn_mask=sees, **options))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (1, L, H, D)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
    """SDPA; on a CPU in fp32 whatever the inputs' dtype, returned in theirs. There (torch
    2.13) the flash kernel's bf16 backward is 2.5-11x slower than its fp32 one at these lengths
    (4.0 against 10.0 ms for 9 heads x 134 queries x 173 keys, 0.8 against 8.7 ms at 39 x 39), a
    fifth of a LoRA step under bf16 autocast; in fp32 it is also the more exact."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, **options)
    with torch.autocast("cpu", enabled=False):  # which would run it in bf16
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
    return out.to(q.dtype)


@functools.lru_cache(maxsize=256)  # every layer of a forward asks for the same few
def _visible(offset: int, length: int, window: int | None, device) -> torch.Tensor:
    """(length, offset + length) bool: which keys each query of an example sees. Queries sit at
    positions offset..offset+length-1 and keys at 0..offset+length-1 (the shared prefix, then
    the example): causal, and within `window` positions where the layer has one. Shared
    between calls: read only."""
    query = torch.arange(offset, offset + length, device=device)[:, None]  # (length, 1)
    key = torch.arange(offset + length, device=device)[None, :]  # (1, offset + length)
    sees = key <= query
    if window is not None:
        sees &= query - key < window
    return sees


def _row_layout(query, key, position_ids) -> tuple[list[int], list[int]] | None:
    """(lengths, first positions) of the segments of a packed row, else None.

    A packed row: batch 1, and position_ids counting up by one within each of at least two
    segments. A segment starts at position 0 (an example) or at P > 0 (an example continuing
    the shared prefix: the row's first P tokens, returned as a segment of its own). Packed rows
    never hold padding: tunelab gives them no mask. Keys C longer than the queries are a cached
    prefix in front of every example (prefix tuning): positions then count from C, and the
    returned ones are counted from C as well.
    """
    cached = key.shape[2] - query.shape[2]
    if position_ids is None or query.shape[0] != 1 or cached < 0:
        return None
    positions = position_ids.reshape(-1) - cached  # (L,)
    if positions.shape[0] != query.shape[2] or int(positions[0]) != 0:
        return None
    starts = [0, *((positions.diff() != 1).nonzero().squeeze(-1) + 1).tolist()]
    if len(starts) < 2:
        return None
    lengths = [end - start for start, end in pairwise([*starts, len(positions)])]
    offsets = positions[starts].tolist()
    shared = {offset for offset in offsets if offset}
    if not shared:
        return lengths, offsets
    prefix = shared.pop()
    if shared or prefix > lengths[0]:
        return None
    if prefix < lengths[0]:  # positions run on from the prefix into the first example: split
        lengths, offsets = [prefix, lengths[0] - prefix, *lengths[1:]], [0, prefix, *offsets[1:]]
    return lengths, offsets


# ---------------------------------------------------------------- shared prefixes


def share_prefix(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A packed row with the prefix all its examples share stored once (module docstring).

    The prefix stops before the first token any example learns, so no target is predicted
    from a hidden state that several examples share. Rows that share less than MIN_SHARED
    tokens, or are not packed rows, come back unchanged.
    """
    if set(batch) != {"input_ids", "labels", "position_ids"} or batch["input_ids"].shape[0] != 1:
        return batch
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    positions = batch["position_ids"][0].tolist()
    starts = [index for index, position in enumerate(positions) if position == 0]
    if len(starts) < 2 or starts[0] != 0:
        return batch
    spans = list(zip(starts, [*starts[1:], len(ids)], strict=True))
    shared = _shared_length(ids, labels, spans)
    if shared < MIN_SHARED:
        return batch
    new_ids, new_labels, new_positions = ids[:shared], labels[:shared], list(range(shared))
    for start, end in spans:
        new_ids += ids[start + shared : end]
        new_labels += labels[start + shared : end]
        new_positions += range(shared, end - start)
    device = batch["input_ids"].device  # the row stays where the model is
    return {
        key: torch.tensor([values], dtype=torch.long, device=device)  # (1, L')
        for key, values in (("input_ids", new_ids), ("labels", new_labels),
                            ("position_ids", new_positions))
    }  # fmt: skip


def _shared_length(ids: list[int], labels: list[int], spans: list[tuple[int, int]]) -> int:
    """Tokens every example starts with, cut so that the token after them is not learned."""
    first_start, first_end = spans[0]
    shared = first_end - first_start
    for start, end in spans:
        limit = min(shared, end - start)
        count = 0
        while count < limit and ids[start + count] == ids[first_start + count]:
            count += 1
        learned = next((i for i in range(start, end) if labels[i] != IGNORE), end) - start
        shared = min(count, learned - 1)  # the label at `shared` must stay IGNORE
    return max(shared, 0)


# ---------------------------------------------------------------- virtual tokens
def virtual_token_row(model: nn.Module, inputs: dict) -> tuple[nn.Module, dict]:
    """A packed row (1, L) for a prompt-tuning or p-tuning PeftModel, as (the base model, its
    inputs): the V virtual tokens once at the head of the row, then the row's embeddings with
    every position shifted by V. The virtual tokens do not depend on the input and come first,
    so their hidden states are the same for every example; the packed attention reads them as
    the row's shared prefix (segment 0, V tokens) that each example sees, which is exactly one
    example per row behind its own V virtual tokens (text at positions V, V+1, ...). PEFT's own
    forward cannot do this: it puts the virtual tokens once before the whole row and drops
    `position_ids`. Positions of a row whose prompt prefix is stored once (`share_prefix`)
    shift the same way; the shared prefix then is the virtual tokens and that prompt."""
    embeds = model.word_embeddings(inputs["input_ids"])  # (1, L, H)
    prompts = model.get_prompt(batch_size=1).to(embeds.dtype)  # (1, V, H)
    positions = inputs["position_ids"]  # (1, L)
    virtual = torch.arange(prompts.shape[1], device=positions.device)[None]  # (1, V)
    return model.get_base_model(), {
        "inputs_embeds": torch.cat([prompts, embeds], dim=1),  # (1, V + L, H)
        "position_ids": torch.cat([virtual, positions + prompts.shape[1]], dim=1),  # (1, V + L)
    }


def prefix_tuning_row(model: nn.Module, inputs: dict) -> tuple[nn.Module, dict]:
    """A packed row (1, L) for a prefix-tuning PeftModel, as (the base model, its inputs):
    PEFT's V learned keys and values per layer as the KV cache in front of the row, and every
    position shifted by V, where PEFT's own forward puts one example's text (V, V+1, ...). The
    packed attention reads the cache as a prefix each example sees and no example sees past;
    PEFT's forward would put the prefix once before the whole row and drop `position_ids`."""
    ids = inputs["input_ids"]  # (1, L)
    virtual = model.active_peft_config.num_virtual_tokens
    cache = model.get_prompt(batch_size=1, max_cache_len=virtual + ids.shape[1])
    return model.get_base_model(), {
        "input_ids": ids,
        "position_ids": inputs["position_ids"] + virtual,  # (1, L)
        "past_key_values": cache,
    }


def packs_virtual_tokens(model: nn.Module) -> bool:
    """Can packed rows carry virtual tokens for this model? Only under the packed attention:
    the fast paths are on and the model runs SDPA (anything else cannot switch to it)."""
    return attn_implementation(model) == "sdpa" and fast_paths_enabled()


@contextmanager
def per_example_attention(model: nn.Module) -> Iterator[None]:
    """The packed attention for the block, unless the model already runs under it (a row with
    virtual tokens needs it: transformers' own packed-row mask would hide them from every
    example after the first)."""
    if attn_implementation(model) in (PACKED_SDPA, SHARED_SDPA):
        yield
        return
    with packed_attention(model, share_prefixes=False):
        yield
