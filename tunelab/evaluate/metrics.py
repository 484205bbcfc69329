"""Text metrics as pure functions: `(predictions, references) -> float` on a 0-100 scale.

`METRICS` is the one table of metric names; the config validates `eval.metrics` against it.
`loss` and `perplexity` are listed too but are computed from token losses by `evaluate()`,
so their `score` is None. Generative metrics score generated text against references:

- chrf / chrf++ — Popović 2015/2017, character n-gram F-score (sacrebleu CHRF, char order 6,
  word order 0 / 2), robust for short outputs and morphologically rich languages.
- bleu — Papineni et al. 2002, corpus BLEU (sacrebleu defaults: 13a tokenisation, 4-grams).
- rougeL — Lin 2004, longest-common-subsequence F-measure per pair (rouge-score, Porter
  stemmer), averaged. Its tokeniser keeps only ASCII letters and digits: non-Latin text scores 0.
- exact_match — whitespace-normalised string equality, percent.
- accuracy — label accuracy: the prediction's first line, normalised and case-folded, equals
  the reference (the example's label when it has one), percent.
- option_accuracy — accuracy by option scoring: the listed option with the highest
  log-likelihood is the answer (`tunelab.evaluate.options`; needs the model, so no `score`).

Edge cases: every score function raises ValueError on empty lists or lists of different
lengths (a score over nothing is a bug upstream, not a 0); empty predictions are fine.
sacrebleu and rouge-score are imported inside the functions so config validation stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

ScoreFunction = Callable[[list[str], list[str]], float]


@dataclass(frozen=True)
class Metric:
    """One metric: its name, whether it needs generated text, and how to score it.

    `score` is None for metrics computed from token losses (loss, perplexity).
    `uses_label`: the reference is the example's label when it has one, else its response.
    """

    name: str
    generative: bool
    higher_is_better: bool
    score: ScoreFunction | None
    uses_label: bool = False


def normalize(text: str) -> str:
    """Strip and collapse every run of whitespace to one space."""
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The first non-blank line of `text` ("" for blank text)."""
    stripped = text.strip()
    return stripped.split("\n", 1)[0] if stripped else ""


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: lengths differ"
        )
    if not predictions:
        raise ValueError("no predictions to score: metrics need at least one example")


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (character 6-grams, no word n-grams), 0-100."""
    return _chrf(predictions, references, word_order=0)


def chrf_plus_plus(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF++ (character 6-grams plus word 1-2-grams), 0-100."""
    return _chrf(predictions, references, word_order=2)


def _chrf(predictions: list[str], references: list[str], word_order: int) -> float:
    from sacrebleu.metrics import CHRF

    _check(predictions, references)
    scorer = CHRF(char_order=6, word_order=word_order)
    return float(scorer.corpus_score(predictions, [references]).score)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults, 0-100."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    return float(BLEU().corpus_score(predictions, [references]).score)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over pairs (Porter stemming), 0-100."""
    from rouge_score.rouge_scorer import RougeScorer

    _check(predictions, references)
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    total = sum(
        scorer.score(reference, prediction)["rougeL"].fmeasure  # (target, prediction) order
        for prediction, reference in zip(predictions, references, strict=True)
    )
    return 100.0 * total / len(predictions)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Percent of predictions equal to their reference after whitespace normalisation."""
    _check(predictions, references)
    hits = sum(
        normalize(prediction) == normalize(reference)
        for prediction, reference in zip(predictions, references, strict=True)
    )
    return 100.0 * hits / len(predictions)


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Percent of predictions whose first line equals the label, ignoring case and spacing."""
    _check(predictions, references)
    hits = sum(
        normalize(first_line(prediction)).casefold() == normalize(reference).casefold()
        for prediction, reference in zip(predictions, references, strict=True)
    )
    return 100.0 * hits / len(predictions)


def perplexity_from_loss(loss: float) -> float:
    """exp(mean token loss); inf instead of an overflow error for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


METRICS: dict[str, Metric] = {
    "loss": Metric("loss", generative=False, higher_is_better=False, score=None),
    "perplexity": Metric("perplexity", generative=False, higher_is_better=False, score=None),
    "chrf": Metric("chrf", generative=True, higher_is_better=True, score=chrf),
    "chrf++": Metric("chrf++", generative=True, higher_is_better=True, score=chrf_plus_plus),
    "bleu": Metric("bleu", generative=True, higher_is_better=True, score=bleu),
    "rougeL": Metric("rougeL", generative=True, higher_is_better=True, score=rouge_l),
    "exact_match": Metric("exact_match", generative=True, higher_is_better=True, score=exact_match),
    "accuracy": Metric(
        "accuracy", generative=True, higher_is_better=True, score=accuracy, uses_label=True
    ),
    "option_accuracy": Metric(
        "option_accuracy", generative=False, higher_is_better=True, score=None, uses_label=True
    ),
}
