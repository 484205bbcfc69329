"""The decoding guards of a running batch, kept per row and applied to all rows in one go.

Offline generation gives transformers' `generate` a fresh set of logits processors per batch
(`repetition_penalty`, `no_repeat_ngram_size`, and our `NewNGramGuard` and
`OutputRepetitionPenalty` from `tunelab.evaluate.decoding`); they rebuild their view of each row
from the whole token matrix at every step, in Python, and assume that every row started with
the batch. Rows of a continuous batch join and leave between steps, so `RowGuards` keeps each
row's state itself and updates it by one token per step:

- the two penalties are (B, V) boolean masks of the tokens they apply to (prompt and output for
  `repetition_penalty`, output word tokens not in the prompt for the output penalty), applied
  at those tokens only (gathered, one `torch.where`, scattered back);
- the two n-gram bans keep, per row, a dict from the last n-1 tokens to the tokens that followed
  them (every n-gram of prompt and output for `no_repeat_ngram_size`, output n-grams the prompt
  lacks for the guard); a step looks up each row's context once and sets every banned
  (row, token) pair to -inf in one indexing call.

Each computes, value for value, what the offline processor computes for the row decoded alone
(tests compare them on random token streams), in the order `generate` applies them, so greedy
output matches `tunelab generate`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch


@dataclass
class GuardOptions:
    """The decoding options a running batch applies itself (per row)."""

    repetition_penalty: float = 1.0  # transformers': prompt and output tokens
    no_repeat_ngram_size: int = 0  # transformers': n-grams of prompt and output
    repetition_guard: int = 0  # ours: output n-grams the prompt lacks
    output_repetition_penalty: float = 1.0  # ours: output word tokens the prompt lacks
    min_new_tokens: int = 0  # EOS forbidden before this many new tokens

    @property
    def active(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size > 0
            or self.repetition_guard > 0
            or self.output_repetition_penalty != 1.0
            or self.min_new_tokens > 0
        )


@dataclass
class _Row:
    options: GuardOptions  # this row's own settings
    prompt: set[int]  # the prompt's tokens (the output penalty exempts them)
    history: list[int]  # prompt then output (the context of no_repeat_ngram_size)
    generated: int = 0
    seen: defaultdict = field(default_factory=lambda: defaultdict(set))  # no_repeat n-grams
    fresh: defaultdict = field(default_factory=lambda: defaultdict(set))  # guard's n-grams
    allowed: set = field(default_factory=set)  # the prompt's n-grams of the guard's size


class RowGuards:
    """Per-row guard state and settings of a batch; `add` rows, `keep` rows, `apply` to (B, V)
    scores, `observe` each step's tokens. Rows may differ in every setting: a penalty is
    applied once per distinct value, to the rows that have it, so each row gets exactly the
    operations the offline processor applies to it."""

    def __init__(self, options: GuardOptions, vocab: int, eos_ids: list[int], wordlike) -> None:
        self.options, self.vocab, self.eos_ids = options, vocab, eos_ids  # options: the default
        self.wordlike = wordlike  # token id -> True when its text holds a letter or digit
        self.rows: list[_Row] = []
        self.seen = torch.zeros(0, vocab, dtype=torch.bool)  # repetition_penalty's tokens
        self.used = torch.zeros(0, vocab, dtype=torch.bool)  # output penalty's tokens

    @property
    def active(self) -> bool:
        return any(row.options.active for row in self.rows)

    def add(
        self, prompts: list[list[int]], contexts: list[list[int]] | None = None,
        options: list[GuardOptions] | None = None,
    ) -> None:  # fmt: skip
        """Rows for `prompts` (with their `options`, default: the batch's), appended after the
        current ones. `contexts`: the tokens transformers' own processors see before the output
        (default: the prompt; none when `generate` decodes from embeddings, as for prompt
        tuning)."""
        seen = torch.zeros(len(prompts), self.vocab, dtype=torch.bool)
        contexts = contexts or prompts
        options = options or [self.options] * len(prompts)
        for index, (prompt, context, settings) in enumerate(
            zip(prompts, contexts, options, strict=True)
        ):
            row = _Row(settings, set(prompt), list(context))
            n, guard = settings.no_repeat_ngram_size, settings.repetition_guard
            if n:
                for start in range(len(context) - n + 1):
                    gram = context[start : start + n]
                    row.seen[tuple(gram[:-1])].add(gram[-1])
            if guard:
                row.allowed = {tuple(prompt[s : s + guard]) for s in range(len(prompt) - guard + 1)}
            seen[index, context] = True
            self.rows.append(row)
        self.seen = torch.cat([self.seen, seen])
        self.used = torch.cat([self.used, torch.zeros(len(prompts), self.vocab, dtype=torch.bool)])

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices`, in that order."""
        self.rows = [self.rows[i] for i in indices]
        self.seen, self.used = self.seen[indices], self.used[indices]

    def apply(self, scores: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scores (B - start, V) of rows start.. with every guard applied, in `generate`'s
        order (a new tensor)."""
        rows = self.rows[start:]
        scores = scores.clone()
        values = [row.options.repetition_penalty for row in rows]
        for penalty in sorted(set(values) - {1.0}):  # transformers': negative scores * p
            _penalise(scores, self.seen[start:], values, penalty, lambda s: s < 0)
        banned = self._banned(rows)
        if banned:
            where, tokens = zip(*banned, strict=True)
            scores[list(where), list(tokens)] = -float("inf")
        early = [i for i, row in enumerate(rows) if row.generated < row.options.min_new_tokens]
        if early:
            eos = torch.tensor(self.eos_ids)[None, :]
            scores[torch.tensor(early)[:, None], eos] = -float("inf")
        values = [row.options.output_repetition_penalty for row in rows]
        for penalty in sorted(set(values) - {1.0}):  # ours: positive scores / p
            _penalise(scores, self.used[start:], values, penalty, lambda s: s <= 0)
        return scores

    def _banned(self, rows: list[_Row]) -> list[tuple[int, int]]:
        """(index in `rows`, token) pairs the two n-gram bans forbid at this step."""
        pairs = []
        for index, row in enumerate(rows):
            n, guard = row.options.no_repeat_ngram_size, row.options.repetition_guard
            if n and len(row.history) + 1 >= n:
                context = tuple(row.history[len(row.history) - n + 1 :]) if n > 1 else ()
                pairs.extend((index, token) for token in row.seen.get(context, ()))
            if guard and row.generated >= guard - 1:
                context = tuple(row.history[len(row.history) - guard + 1 :])
                pairs.extend((index, token) for token in row.fresh.get(context, ()))
        return pairs

    def observe(self, tokens: list[int], start: int = 0) -> None:
        """Take the new token of each row from `start` on (one per row, in row order)."""
        for index, (row, token) in enumerate(zip(self.rows[start:], tokens, strict=True), start):
            n, guard = row.options.no_repeat_ngram_size, row.options.repetition_guard
            row.history.append(token)
            row.generated += 1
            if n and len(row.history) >= n:
                gram = row.history[len(row.history) - n :]
                row.seen[tuple(gram[:-1])].add(token)
            if guard and row.generated >= guard:
                gram = tuple(row.history[len(row.history) - guard :])
                if gram not in row.allowed:
                    row.fresh[gram[:-1]].add(token)
            self.seen[index, token] = True
            if token not in row.prompt and self.wordlike(token):
                self.used[index, token] = True


def _penalise(scores: torch.Tensor, mask: torch.Tensor, values: list, penalty: float, times):
    """In place, for the rows whose setting is `penalty`, at their tokens in `mask` (B, V):
    score * penalty where `times(score)`, else score / penalty — the processors' `torch.where`
    over the whole vocabulary, taken only where it changes something (a few dozen tokens a
    row instead of the vocabulary)."""
    if any(value != penalty for value in values):
        mask = mask & torch.tensor([value == penalty for value in values])[:, None]
    rows, tokens = mask.to(scores.device).nonzero(as_tuple=True)
    picked = scores[rows, tokens]
    scores[rows, tokens] = torch.where(times(picked), picked * penalty, picked / penalty)
