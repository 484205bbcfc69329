"""Metric values against sacrebleu and rouge-score called directly, plus fixed points."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from tunelab.config import EvalConfig
from tunelab.evaluate.metrics import METRICS, perplexity_from_loss

PREDICTIONS = ["the cat sat on the mat", "a quick brown dog jumps"]
REFERENCES = ["the cat is sitting on the mat", "the quick brown fox jumped"]
GENERATIVE = ["chrf", "chrf++", "bleu", "rougeL", "exact_match", "accuracy"]
MODEL_SCORED = ["option_accuracy"]  # needs the model: tunelab.evaluate.options


def score(name: str, predictions: list[str], references: list[str]) -> float:
    return METRICS[name].score(predictions, references)


def test_table_lists_every_metric_with_its_kind():
    assert set(METRICS) == {"loss", "perplexity", *GENERATIVE, *MODEL_SCORED}
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.generative == (name in GENERATIVE)
        assert metric.higher_is_better == (name in GENERATIVE + MODEL_SCORED)
        assert (metric.score is None) == (not metric.generative)
    assert EvalConfig(metrics=list(METRICS)).metrics == list(METRICS)


def test_chrf_matches_sacrebleu():
    expected = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], char_order=6, word_order=0)
    assert score("chrf", PREDICTIONS, REFERENCES) == pytest.approx(expected.score)
    plus = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], char_order=6, word_order=2)
    assert score("chrf++", PREDICTIONS, REFERENCES) == pytest.approx(plus.score)
    assert plus.score != pytest.approx(expected.score)  # word n-grams do count


def test_bleu_matches_sacrebleu():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert score("bleu", PREDICTIONS, REFERENCES) == pytest.approx(expected)
    assert 0 < expected < 100


def test_rouge_l_is_mean_f_measure_with_stemming():
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    pairs = zip(REFERENCES, PREDICTIONS, strict=True)
    expected = 100 * sum(scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in pairs) / 2
    assert score("rougeL", PREDICTIONS, REFERENCES) == pytest.approx(expected)
    # Stemming: "jumps" and "jumped" share a stem.
    assert score("rougeL", ["dogs jumped"], ["dog jumps"]) == pytest.approx(100.0)


@pytest.mark.parametrize("name", GENERATIVE)
def test_identical_text_scores_100(name):
    assert score(name, REFERENCES, REFERENCES) == pytest.approx(100.0)


@pytest.mark.parametrize("name", GENERATIVE)
def test_unrelated_text_scores_low(name):
    assert score(name, ["xyzzy qwv"], ["the cat sat on the mat"]) < 10.0


def test_exact_match_normalises_whitespace_but_not_case():
    assert score("exact_match", ["  the  cat\n sat\t"], ["the cat sat"]) == 100.0
    assert score("exact_match", ["The cat sat"], ["the cat sat"]) == 0.0
    assert score("exact_match", ["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 50.0


def test_accuracy_compares_first_line_case_folded():
    predictions = ["Positive\nbecause the review says so", "  NEGATIVE  ", "neutral", ""]
    labels = ["positive", "negative", "positive", "positive"]
    assert score("accuracy", predictions, labels) == 50.0
    assert score("accuracy", ["\n\n  Straße \nmore"], ["STRASSE"]) == 100.0  # casefold, not lower


@pytest.mark.parametrize("name", GENERATIVE)
def test_empty_predictions_score_without_error(name):
    value = score(name, ["", ""], REFERENCES)
    assert value == pytest.approx(0.0)


@pytest.mark.parametrize("name", GENERATIVE)
def test_empty_or_mismatched_lists_are_errors(name):
    with pytest.raises(ValueError, match="at least one"):
        score(name, [], [])
    with pytest.raises(ValueError, match="lengths differ"):
        score(name, ["a"], ["a", "b"])


def test_perplexity_from_loss():
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity_from_loss(1e6) == math.inf


def test_importing_metrics_stays_light():
    code = (
        "import sys, tunelab.evaluate;"
        "heavy = [m for m in ('torch', 'transformers', 'sacrebleu') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
