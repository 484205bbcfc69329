"""Decoding that does not loop: a repetition guard that lets the model copy from its prompt, and
a stop at the end of a one-line answer.

A small model decoding greedily often falls into a loop ("ukuze, ukuze, ukuze, ...") until
`max_new_tokens`. transformers' `no_repeat_ngram_size` and `repetition_penalty` break loops but
also look at the prompt, so they forbid or penalise copying a name or a number from the source
sentence — exactly what a translation must do. `NewNGramGuard` forbids only repeats *within the
output* of an n-gram the prompt does not contain.

`NewlineStop` ends a row once its answer has text and then a newline: right for one-line
answers (translation pairs), which references without a newline show. Both keep per-row state
for one `generate` call and are built fresh for each batch. They count the tokens generated so
far from the number of calls, so they work whether `generate` was given ids or embeddings (the
prompt-learning path passes embeddings, and then the ids it sees hold only the new tokens).
Their `keep_rows(rows)` narrows that state when finished rows leave the batch
(`tunelab/evaluate/greedy.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria


def token_ngrams(tokens: Sequence[int], n: int) -> set[tuple[int, ...]]:
    """Every n-gram of consecutive tokens."""
    return {tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)}


class NewNGramGuard(LogitsProcessor):
    """Never repeat an n-gram of `n` tokens within a row's output, unless the row's prompt
    holds that n-gram (copying "Nelson Mandela" twice from the source stays possible)."""

    def __init__(self, n: int, prompts: Sequence[Sequence[int]]) -> None:
        if n < 2:
            raise ValueError(f"the repetition guard needs n >= 2, got {n}")
        self.n = n
        self.allowed = [token_ngrams(prompt, n) for prompt in prompts]
        self.steps = 0  # tokens generated so far (one call per decoding step)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """scores (B, V) with the tokens that would repeat an output n-gram set to -inf."""
        generated = input_ids[:, input_ids.shape[1] - self.steps :].tolist()  # (B, steps)
        self.steps += 1
        if len(generated[0]) < self.n - 1:
            return scores
        scores = scores.clone()
        for row, tokens in enumerate(generated):
            banned = self.banned(tokens, self.allowed[row])
            if banned:
                scores[row, banned] = -float("inf")
        return scores

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows' state, in this order (finished rows left the batch)."""
        self.allowed = [self.allowed[row] for row in rows]

    def banned(self, tokens: list[int], allowed: set[tuple[int, ...]]) -> list[int]:
        """Next tokens that would complete an n-gram already in `tokens` and not in `allowed`."""
        context = tuple(tokens[len(tokens) - self.n + 1 :])
        found = []
        for start in range(len(tokens) - self.n + 1):
            gram = tuple(tokens[start : start + self.n])
            if gram[:-1] == context and gram not in allowed:
                found.append(gram[-1])
        return found


class OutputRepetitionPenalty(LogitsProcessor):
    """transformers' repetition penalty (CTRL, Keskar et al. 2019: a used token's logit divided
    by `penalty` when positive, multiplied when negative) applied only to word tokens this row
    has already generated and its prompt does not hold: copying from the source stays free, and
    so do tokens without a letter or digit (punctuation and spaces repeat in any JSON or list)."""

    def __init__(self, penalty: float, prompts: Sequence[Sequence[int]], tokenizer=None) -> None:
        if penalty < 1.0:
            raise ValueError(f"the output repetition penalty must be >= 1, got {penalty}")
        self.penalty = penalty
        self.exempt = [set(prompt) for prompt in prompts]
        self.tokenizer = tokenizer
        self.wordlike: dict[int, bool] = {}  # token id -> holds a letter or digit
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """scores (B, V) with the row's own earlier output word tokens penalised."""
        generated = input_ids[:, input_ids.shape[1] - self.steps :].tolist()  # (B, steps)
        self.steps += 1
        scores = scores.clone()
        for row, tokens in enumerate(generated):
            used = sorted(t for t in set(tokens) - self.exempt[row] if self.is_word(t))
            if used:
                values = scores[row, used]
                scores[row, used] = torch.where(
                    values > 0, values / self.penalty, values * self.penalty
                )
        return scores

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows' state, in this order (finished rows left the batch)."""
        self.exempt = [self.exempt[row] for row in rows]

    def is_word(self, token: int) -> bool:
        if self.tokenizer is None:
            return True
        if token not in self.wordlike:
            text = self.tokenizer.decode([token], skip_special_tokens=True)
            self.wordlike[token] = any(character.isalnum() for character in text)
        return self.wordlike[token]


class NewlineStop(StoppingCriteria):
    """Marks a row finished once its decoded output has non-blank text followed by a newline."""

    def __init__(self, tokenizer, rows: int) -> None:
        self.tokenizer = tokenizer
        self.texts = [""] * rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        """(B,) True where the row's answer has ended at a newline."""
        last = input_ids[:, -1].tolist()
        done = []
        for row, token in enumerate(last):
            self.texts[row] += self.tokenizer.decode([token], skip_special_tokens=True)
            done.append("\n" in self.texts[row].lstrip())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows' state, in this order (finished rows left the batch)."""
        self.texts = [self.texts[row] for row in rows]


def first_line_answer(text: str) -> str:
    """The answer up to its first newline (leading blank lines skipped), stripped."""
    return text.lstrip().split("\n", 1)[0].strip()


def resolve_stop_at_newline(setting: bool | str, references: Sequence[str]) -> bool:
    """`auto`: stop at a newline when there are references and none holds a newline."""
    if setting != "auto":
        return bool(setting)
    return bool(references) and not any("\n" in reference.strip() for reference in references)


def resolve_options(options: dict, references: Sequence[str]) -> dict:
    """A copy of decoding `options` with `stop_at_newline: auto` decided by `references`
    (no references, e.g. when serving: no stop at newline)."""
    resolved = dict(options)
    if resolved.get("stop_at_newline") == "auto":
        resolved["stop_at_newline"] = resolve_stop_at_newline("auto", references)
    return resolved
