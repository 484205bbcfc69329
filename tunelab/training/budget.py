"""Budgets in examples and tokens: what makes packed and padded training comparable.

A step budget is not a fair measure across batching modes: a padded micro-batch holds
`batch_size` examples, a packed one as many whole examples as fit in `tokens_per_batch`
tokens (about 3 where padding would give 4, with the defaults). `train.max_examples` and
`train.max_tokens` count what the model actually saw instead; the last window is cut at the
example where the budget runs out, so two runs under the same example budget see exactly the
same number of examples, whatever their batching (a token budget is met to within one
example: examples are never split).

The batch format is `tunelab.data.batching`'s: a packed batch is one row (1, L) whose
`position_ids` restart at 0 for each example; a padded batch is (B, L) with an
`attention_mask` marking the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Batch = dict[str, torch.Tensor]


@dataclass
class Seen:
    """Examples and non-padding tokens (prompt and response) in the windows taken so far."""

    examples: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Limits:
    """`train.max_examples` / `train.max_tokens` (None: no limit)."""

    examples: int | None = None
    tokens: int | None = None

    def reached(self, seen: Seen) -> bool:
        return (self.examples is not None and seen.examples >= self.examples) or (
            self.tokens is not None and seen.tokens >= self.tokens
        )


def example_lengths(batch: Batch) -> list[int]:
    """Tokens of each example in the batch, in order."""
    if "position_ids" in batch:  # packed (1, L): an example starts where positions restart
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
        ends = [*starts[1:], batch["position_ids"].shape[1]]
        return [end - start for start, end in zip(starts, ends, strict=True)]
    mask = batch.get("attention_mask")
    if mask is None:
        return [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
    return mask.sum(dim=1).tolist()


def first_examples(batch: Batch, count: int) -> Batch:
    """The batch holding only its first `count` examples (packed: a shorter row; padded:
    fewer rows, trimmed to the longest one kept)."""
    lengths = example_lengths(batch)
    if "position_ids" in batch:
        end = sum(lengths[:count])
        return {key: value[:, :end] for key, value in batch.items()}
    width = max(lengths[:count])
    return {key: value[:count, :width] for key, value in batch.items()}


def take_window(window: list[Batch], seen: Seen, limits: Limits, *, cut: bool = True) -> list:
    """The part of `window` (one optimizer step's micro-batches) within the budget; `seen`
    grows by what it holds. Empty when the budget was already spent. `cut=False` keeps a
    started window whole (with several processes, each must keep its micro-batches)."""
    if limits.reached(seen):
        return []
    taken = []
    for batch in window:
        lengths = example_lengths(batch)
        keep = 0
        for length in lengths:
            if cut and limits.reached(seen):
                break
            seen.examples, seen.tokens, keep = seen.examples + 1, seen.tokens + length, keep + 1
        if keep:
            taken.append(batch if keep == len(lengths) else first_examples(batch, keep))
    return taken
