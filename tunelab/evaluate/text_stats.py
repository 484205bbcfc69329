"""What chrF++ does not show: repetition, diversity and length of generated text.

chrF++ rewards a hypothesis that repeats a word of the reference until the token limit (every
repeat adds matching character n-grams up to the reference's counts, and recall dominates the
F-beta with beta = 2). These figures make such output visible beside it:

- seq-rep-4 — Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"
  (arXiv:1908.04319): the share of repeated 4-grams within one output,
  1 - |unique 4-grams| / |4-grams|, averaged over outputs; an output shorter than 4 words
  counts as 0. Percent: 0 = no 4-gram repeats, near 100 = one phrase looping.
- distinct-2 — Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models" (arXiv:1510.03055): distinct word bigrams / all word bigrams over all
  outputs together, percent (0 when no output has two words).
- length_ratio — total characters of the outputs / total characters of the references
  (characters, not words: isiXhosa and other agglutinative languages write long words).

Words are whitespace-separated tokens: cheap, tokenizer-independent, and what a reader sees.
"""

from __future__ import annotations

from collections.abc import Sequence

REPETITION_WARNING = 20.0  # seq-rep-4 (percent) above which a run's outputs loop


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Every run of `n` consecutive words, in order (empty when there are fewer than n)."""
    return [tuple(words[start : start + n]) for start in range(len(words) - n + 1)]


def repeated_share(text: str, n: int = 4) -> float:
    """1 - unique/total word n-grams of one text, in [0, 1); 0 for fewer than n words."""
    grams = ngrams(text.split(), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def seq_rep(predictions: Sequence[str], n: int = 4) -> float:
    """seq-rep-n: the mean over outputs of the share of repeated n-grams, percent."""
    if not predictions:
        raise ValueError("no predictions: seq-rep needs at least one output")
    return 100.0 * sum(repeated_share(text, n) for text in predictions) / len(predictions)


def distinct(predictions: Sequence[str], n: int = 2) -> float:
    """distinct-n: distinct word n-grams / all word n-grams across all outputs, percent."""
    grams = [gram for text in predictions for gram in ngrams(text.split(), n)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def length_ratio(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Characters generated / characters in the references (inf when the references are empty
    but the outputs are not, 1.0 when both are)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    generated = sum(len(text) for text in predictions)
    expected = sum(len(text) for text in references)
    if expected == 0:
        return 1.0 if generated == 0 else float("inf")
    return generated / expected


def text_statistics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"seq-rep-4", "distinct-2", "length_ratio"} of the outputs against their references."""
    return {
        "seq-rep-4": seq_rep(predictions, 4),
        "distinct-2": distinct(predictions, 2),
        "length_ratio": length_ratio(predictions, references),
    }
