"""Batching: packed rows (no padding at all) or length-grouped padded batches.

Packing concatenates whole examples into one row of at most `tokens_per_batch` tokens, with
`position_ids` restarting at 0 for each example and no attention mask. transformers (5.x)
reads the position resets as sequence boundaries and builds a block-diagonal causal mask
(`find_packed_sequence_indices` in masking_utils), so every example attends only to itself and
the packed row gives the same logits as each example run alone; nothing is spent on padding.
Rows are filled first-fit-decreasing within shuffled chunks, so rows hold a similar number of
tokens while which examples share a row still changes with every epoch.

Padded batches group examples of similar length (sorted within shuffled chunks of 50 batches)
to keep padding low while the batch order stays random: a cheap form of bucketing.

Every batch is a dict of torch.long tensors: input_ids and labels, plus position_ids (packed)
or attention_mask (padded). Ordering depends only on (seed, epoch), never on global state.
"""

from __future__ import annotations

import random

import torch

from tunelab.data.types import IGNORE, Tokenized

PACK_CHUNK = 256  # examples per first-fit window: big enough to fill rows, small enough to mix
GROUP_BATCHES = 50  # padded mode: batches per length-sorted chunk


def make_batches(
    items: list[Tokenized],
    *,
    batch_size: int,
    tokens_per_batch: int | None,
    packing: bool,
    pad_id: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """One epoch of batches over `items`, each example exactly once.

    packing: each batch is one row (1, L) with L <= tokens_per_batch (an example longer than
    that gets a row of its own); tokens_per_batch defaults to batch_size * longest / 2.
    Otherwise batches of batch_size examples, right-padded with pad_id to (B, L_max).
    shuffle=False keeps the given order (evaluation).
    """
    if not items:
        return []
    rng = random.Random(f"{seed}:{epoch}")
    if packing:
        longest = max(len(item) for item in items)
        capacity = tokens_per_batch or max(longest, batch_size * longest // 2)
        rows = pack_rows(items, capacity, rng if shuffle else None)
        return [packed_batch([items[i] for i in row]) for row in rows]
    groups = group_by_length(items, batch_size, rng if shuffle else None)
    return [padded_batch([items[i] for i in group], pad_id) for group in groups]


def pack_rows(items: list[Tokenized], capacity: int, rng: random.Random | None) -> list[list[int]]:
    """Indices of the examples in each packed row.

    With rng: shuffle, first-fit-decreasing within chunks, shuffle the rows. Without: fill rows
    in order (next-fit), so the example order is kept.
    """
    order = list(range(len(items)))
    if rng is None:
        return _next_fit(order, items, capacity)
    rng.shuffle(order)
    rows: list[list[int]] = []
    for start in range(0, len(order), PACK_CHUNK):
        chunk = sorted(order[start : start + PACK_CHUNK], key=lambda i: -len(items[i]))
        rows += _first_fit(chunk, items, capacity)
    rng.shuffle(rows)
    return rows


def _first_fit(order: list[int], items: list[Tokenized], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    free: list[int] = []  # tokens left in each row
    for index in order:
        length = len(items[index])
        slot = next((r for r, space in enumerate(free) if space >= length), None)
        if slot is None:
            rows.append([index])
            free.append(capacity - length)  # negative for an over-long example: it stays alone
        else:
            rows[slot].append(index)
            free[slot] -= length
    return rows


def _next_fit(order: list[int], items: list[Tokenized], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    used = capacity  # forces a new row for the first example
    for index in order:
        length = len(items[index])
        if used + length > capacity:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def group_by_length(
    items: list[Tokenized], batch_size: int, rng: random.Random | None
) -> list[list[int]]:
    """Indices of the examples in each padded batch (similar lengths together when shuffling)."""
    order = list(range(len(items)))
    if rng is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    window = GROUP_BATCHES * batch_size
    groups = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(items[i]))
        groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    return groups


def packed_batch(items: list[Tokenized]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row (1, L); positions restart at 0 for each example."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for item in items:
        input_ids += item.input_ids
        labels += [IGNORE, *item.labels[1:]]  # never predict across an example boundary
        positions += range(len(item))
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),  # (1, L)
        "labels": torch.tensor([labels], dtype=torch.long),  # (1, L)
        "position_ids": torch.tensor([positions], dtype=torch.long),  # (1, L)
    }


def padded_batch(items: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest: input_ids/labels/attention_mask (B, L_max)."""
    width = max(len(item) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)  # (B, L)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, L)
    for row, item in enumerate(items):
        length = len(item)
        input_ids[row, :length] = torch.tensor(item.input_ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(item.labels, dtype=torch.long)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
