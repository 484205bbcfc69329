"""A shared prompt-prefix KV cache for the running batches' prefills.

Served prompts start alike: the chat template and the run's system prompt are the same tokens in
every request. A key or value at position j depends only on the tokens up to j (causal
attention), so the cache of a prompt's first P tokens is the cache of any other prompt that
starts with the same P tokens, on the same weights. `PrefixCache` keeps the K/V of a few recent
prompts per *view* — a model, and in a mixed batch the row's run (its `RowDelta`), since a run's
weights change the keys and values — and `RunningBatch.join` prefills only what follows the
longest common prefix on top of a copy of it.

A prompt-tuning row's virtual tokens, in front of its prompt, are the same for every prompt of
its run: the running batch keys its entries by that sequence, the virtual tokens written as a
placeholder id (`batch.VIRTUAL`), so they are cached with the prefix. The cache is bounded:
`per_view` entries per view and `size` in all, least recently used first out.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class Entry:
    """The keys and values of one prompt on one view: per layer (1, heads, tokens, dim)."""

    model: weakref.ref
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class PrefixCache:
    """(view, prompt) -> its K/V; `match` finds the entry sharing the longest prefix."""

    def __init__(self, size: int = 16, per_view: int = 2, min_tokens: int = 4) -> None:
        self.size, self.per_view, self.min_tokens = size, per_view, min_tokens
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()  # (view, tokens) -> entry

    def match(self, model, view, prompt: list[int]) -> tuple[int, Entry | None]:
        """(P, entry): the entry of `view` on `model` sharing the longest prefix with `prompt`,
        P its length (at most len(prompt) - 1: the last token must go through the model for
        the next token's logits); (0, None) below `min_tokens`."""
        best, found = 0, None
        for (key, tokens), entry in self.entries.items():
            if key != (id(model), view) or entry.model() is not model:
                continue
            shared = common_prefix(tokens, prompt, len(prompt) - 1)
            if shared > best:
                best, found = shared, (key, tokens)
        if found is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(found)
        return best, self.entries[found]

    def store(self, model, view, prompt: list[int], keys: list, values: list) -> None:
        """Remember `prompt`'s K/V on `view` (per layer (1, heads, len(prompt), dim))."""
        key = ((id(model), view), tuple(prompt))
        self.entries.pop(key, None)
        same = [k for k in self.entries if k[0] == key[0]]
        for old in same[: max(0, len(same) - self.per_view + 1)]:
            del self.entries[old]
        self.entries[key] = Entry(weakref.ref(model), key[1], keys, values)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def common_prefix(a, b, limit: int) -> int:
    """Length of the common prefix of sequences `a` and `b`, at most `limit`."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y or count >= limit:
            break
        count += 1
    return count
