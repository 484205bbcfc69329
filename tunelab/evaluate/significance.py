"""Is a gain real or noise? Bootstrap confidence intervals and the paired bootstrap test.

Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation"
(aclanthology.org/W04-3250): resample the test sentences with replacement many times and
recompute the corpus score on each resample. The 2.5th and 97.5th percentiles of those scores
bound a 95 % interval; scoring two systems on the *same* resamples gives the distribution of
their difference (paired bootstrap).

The scores are sacrebleu's own corpus chrF, chrF++ and BLEU (tunelab.evaluate.metrics): every
sentence's sufficient statistics (n-gram match counts) are extracted once by the metric, a
resample's score is the metric's score of the summed statistics — exactly `corpus_score` on the
resampled sentences, as sacrebleu's own `--paired-bs` computes it (tests check the equality).
`_extract_corpus_statistics` and `_compute_score_from_stats` are sacrebleu methods with a
leading underscore, used only here.

The p-value follows sacrebleu (after Moses' bootstrap-hypothesis-difference-significance.pl
and multeval): two-sided, the share of resampled |differences|, shifted to mean zero, that
reach the observed |difference|, with +1 in numerator and denominator. "Reach" (>=) where
sacrebleu counts "exceed" (>): the same for any real difference, but a system against itself
gets p = 1 here instead of sacrebleu's 1/(n+1), which would call no difference significant.
Resampling is seeded: the same inputs and seed give the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

SACREBLEU_METRICS = ("chrf++", "chrf", "bleu")  # the metrics that get intervals
RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A corpus score and its bootstrap percentile interval."""

    score: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedResult:
    """System B against baseline A on the same sentences: delta = B - A, its interval and the
    two-sided p-value of "no difference"."""

    baseline: float
    system: float
    delta: float
    low: float
    high: float
    p_value: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sacrebleu_metric(name: str):
    """A fresh sacrebleu scorer for `name`, configured as tunelab.evaluate.metrics scores it."""
    from sacrebleu.metrics import BLEU, CHRF

    if name == "chrf":
        return CHRF(char_order=6, word_order=0)
    if name == "chrf++":
        return CHRF(char_order=6, word_order=2)
    if name == "bleu":
        return BLEU()
    raise ValueError(f"no bootstrap for metric {name!r}; supported: {', '.join(SACREBLEU_METRICS)}")


def signature(name: str) -> str:
    """sacrebleu's signature of the metric as scored here (one reference per sentence), e.g.
    `chrF2++|nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0`."""
    metric = sacrebleu_metric(name)
    score = metric.corpus_score(["a"], [["a"]])  # the reference count enters the signature
    return f"{score.name}|{metric.get_signature().format()}"


def sentence_statistics(
    name: str, predictions: Sequence[str], references: Sequence[str]
) -> np.ndarray:
    """(N, K) sufficient statistics per sentence; a corpus score is a function of their sum."""
    _check(predictions, references)
    metric = sacrebleu_metric(name)
    stats = metric._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(stats, dtype=np.float64)


def score_from_statistics(name: str, summed: np.ndarray, metric=None) -> float:
    """The corpus score of statistics summed over sentences, (K,) -> float."""
    metric = metric or sacrebleu_metric(name)
    return float(metric._compute_score_from_stats(summed).score)


def resample_indices(count: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, count) sentence indices drawn with replacement, seeded."""
    if count < 1:
        raise ValueError("bootstrap needs at least one sentence")
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def resampled_scores(name: str, stats: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(resamples,) corpus scores, one per row of `indices`."""
    metric = sacrebleu_metric(name)
    return np.array([score_from_statistics(name, stats[row].sum(0), metric) for row in indices])


def percentile_bounds(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` share of `values`: (low, high) percentiles."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    name: str,
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The corpus score of `name` with a percentile bootstrap interval over sentences."""
    stats = sentence_statistics(name, predictions, references)
    scores = resampled_scores(name, stats, resample_indices(len(stats), resamples, seed))
    return Interval(
        score_from_statistics(name, stats.sum(0)), *percentile_bounds(scores, confidence)
    )


def paired_p_value(deltas: np.ndarray, observed: float) -> float:
    """Paired-bootstrap p-value: share of |resampled deltas| shifted to mean 0 that reach
    |observed|, with +1 smoothing (sacrebleu's, with >= for >; see the module docstring)."""
    spread = np.abs(deltas)
    exceed = int(np.sum(spread - spread.mean() >= abs(observed)))
    return (exceed + 1) / (len(deltas) + 1)


def paired_bootstrap(
    name: str,
    baseline: Sequence[str],
    system: Sequence[str],
    references: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> PairedResult:
    """System against baseline on the same resampled sentences (both score the references)."""
    stats_a = sentence_statistics(name, baseline, references)
    stats_b = sentence_statistics(name, system, references)
    indices = resample_indices(len(references), resamples, seed)
    deltas = resampled_scores(name, stats_b, indices) - resampled_scores(name, stats_a, indices)
    score_a = score_from_statistics(name, stats_a.sum(0))
    score_b = score_from_statistics(name, stats_b.sum(0))
    low, high = percentile_bounds(deltas, confidence)
    delta = score_b - score_a
    return PairedResult(score_a, score_b, delta, low, high, paired_p_value(deltas, delta))


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions: a bootstrap needs at least one sentence")
