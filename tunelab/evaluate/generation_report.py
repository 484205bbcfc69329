"""The honest picture of generated text: scores with intervals, the paired test, repetition.

Input is the samples a run writes (`samples-before.jsonl`, `samples-after.jsonl`: one
{"prompt", "reference", "prediction"} per generated example), so the same functions serve a
run's own before/after and, later, two runs scored on the same examples (`compare_samples`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tunelab.evaluate.significance import (
    CONFIDENCE,
    RESAMPLES,
    SACREBLEU_METRICS,
    bootstrap_interval,
    paired_bootstrap,
    signature,
)
from tunelab.evaluate.text_stats import REPETITION_WARNING, text_statistics

log = logging.getLogger(__name__)


def describe_outputs(
    samples: Sequence[dict], metrics: Sequence[str], *, resamples: int, seed: int, confidence: float
) -> dict:
    """{metric: {score, low, high}} for the sacrebleu metrics asked for, plus seq-rep-4,
    distinct-2 and length_ratio of the predictions."""
    predictions, references = _columns(samples)
    scores: dict = {
        name: bootstrap_interval(
            name, predictions, references, resamples=resamples, seed=seed, confidence=confidence
        ).as_dict()
        for name in _interval_metrics(metrics)
    }
    scores.update(text_statistics(predictions, references))
    return scores


def compare_samples(
    baseline: Sequence[dict],
    system: Sequence[dict],
    metrics: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """{metric: paired bootstrap of system vs baseline}; both must hold the same examples in
    the same order (same prompts and references), else ValueError."""
    if [(s["prompt"], s["reference"]) for s in baseline] != [
        (s["prompt"], s["reference"]) for s in system
    ]:
        raise ValueError("paired test: the two sample sets do not hold the same examples in order")
    references = [s["reference"] for s in baseline]
    first = [s["prediction"] for s in baseline]
    second = [s["prediction"] for s in system]
    return {
        name: paired_bootstrap(
            name, first, second, references, resamples=resamples, seed=seed, confidence=confidence
        ).as_dict()
        for name in _interval_metrics(metrics)
    }


def compare_runs(
    baseline_run: str | Path,
    system_run: str | Path,
    metrics: Sequence[str] = SACREBLEU_METRICS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """The paired test between two finished runs' `samples-after.jsonl` (system - baseline);
    they must have generated for the same eval examples, else ValueError."""
    from tunelab.io import read_jsonl

    sides = []
    for run in (baseline_run, system_run):
        path = Path(run) / "samples-after.jsonl"
        if not path.is_file():
            raise ValueError(f"{run}: no samples-after.jsonl (the run generated nothing)")
        sides.append(read_jsonl(path))
    options = dict(resamples=resamples, seed=seed, confidence=confidence)
    return compare_samples(sides[0], sides[1], metrics, **options)


def generation_report(
    before: Sequence[dict] | None,
    after: Sequence[dict],
    metrics: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict:
    """Everything summary.json keeps about generated text: per side the scores with intervals
    and the text statistics, the paired test after vs before, sacrebleu's signatures, the
    bootstrap settings, and warnings about looping output (also logged)."""
    options = dict(resamples=resamples, seed=seed, confidence=confidence)
    if resamples < 1:  # intervals off: the text statistics remain
        metrics = []
    report: dict = {
        "examples": len(after),
        "bootstrap": {**options, "resampled": "sentences", "interval": "percentile"},
        "signatures": {name: signature(name) for name in _interval_metrics(metrics)},
    }
    sides = {"before": before, "after": after}
    for tag, samples in sides.items():
        if samples:
            report[tag] = describe_outputs(samples, metrics, **options)
    if before:
        report["paired"] = compare_samples(before, after, metrics, **options)
    report["warnings"] = repetition_warnings(report)
    for warning in report["warnings"]:
        log.warning(warning)
    return report


def repetition_warnings(report: dict) -> list[str]:
    """One line per side whose outputs repeat heavily (seq-rep-4 above REPETITION_WARNING)."""
    lines = []
    for tag in ("before", "after"):
        value = report.get(tag, {}).get("seq-rep-4")
        if value is not None and value > REPETITION_WARNING:
            lines.append(
                f"{tag}: outputs repeat heavily (seq-rep-4 {value:.1f}% > {REPETITION_WARNING:g}%)"
                "; read the samples, and try `tunelab eval RUN --tune-decoding`"
            )
    return lines


def _interval_metrics(metrics: Sequence[str]) -> list[str]:
    return [name for name in SACREBLEU_METRICS if name in metrics]


def _columns(samples: Sequence[dict]) -> tuple[list[str], list[str]]:
    return [s["prediction"] for s in samples], [s["reference"] for s in samples]
