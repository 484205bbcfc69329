"""`tunelab eval RUN --tune-decoding`: choose decoding settings on the dev split, never test.

A small grid of decoding settings (plain greedy, transformers' no-repeat n-grams with its
repetition penalty, the repetition guard's n, the output-only repetition penalty, with and
without the newline stop, seeded nucleus sampling) is scored on the run's own eval split — the dev
data named by `data.eval`, or the held-out share of the train file. The winner has the best
score (chrF++ unless the run's metrics name another sacrebleu metric) among the settings whose
outputs do not loop (seq-rep-4 under the warning threshold; all settings when none qualifies).
It is written into the run's config.yaml `eval` section, so `tunelab eval`, `generate` and
`serve` decode with it, and every candidate's figures go to RUN/decoding.json.

An eval file whose name says "test" is refused: tuning on test data would make its scores
optimistic. The test data is read by nothing here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunelab.config import EvalConfig
from tunelab.data import build_datasets
from tunelab.errors import TunelabError
from tunelab.evaluate import evaluate_with_predictions
from tunelab.evaluate.decoding import resolve_stop_at_newline
from tunelab.evaluate.significance import SACREBLEU_METRICS
from tunelab.evaluate.text_stats import REPETITION_WARNING, text_statistics
from tunelab.io import atomic_write_json
from tunelab.run import RunFiles, load_run, read_run_config, write_run_config
from tunelab.run_config import RunConfig
from tunelab.task_config import eval_split_tasks

PLAIN: dict[str, Any] = {  # what a grid entry starts from: greedy, no guards, newline stop auto
    "repetition_guard": 0, "output_repetition_penalty": 1.0, "stop_at_newline": "auto",
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "do_sample": False,
    "temperature": 1.0, "top_p": 1.0,
}  # fmt: skip
DECODING_FIELDS = (*PLAIN, "sample_seed")

GRID: list[dict[str, Any]] = [
    {"repetition_guard": 0, "stop_at_newline": False},  # plain greedy
    {"repetition_guard": 0, "stop_at_newline": False, "no_repeat_ngram_size": 3,
     "repetition_penalty": 1.2},  # transformers' own guards (they also count the prompt)
    {"repetition_guard": 3},
    {"repetition_guard": 4},
    {"repetition_guard": 3, "output_repetition_penalty": 1.2},
    {"repetition_guard": 4, "output_repetition_penalty": 1.2},
    {"repetition_guard": 4, "output_repetition_penalty": 1.2, "stop_at_newline": False},
    {"repetition_guard": 4, "output_repetition_penalty": 1.2, "do_sample": True,
     "temperature": 0.7, "top_p": 0.9},  # seeded (sample_seed)
]  # fmt: skip


def tune_decoding(
    run_dir: str | Path,
    *,
    grid: list[dict[str, Any]] | None = None,
    max_examples: int | None = None,
) -> dict[str, Any]:
    """Score each decoding setting of `grid` on the run's dev split, store the winner in the
    run's config and return {"metric", "examples", "candidates", "winner", "previous"}."""
    cfg = read_run_config(run_dir)
    _refuse_test_split(cfg)
    metric = next((m for m in cfg.eval.metrics if m in SACREBLEU_METRICS), "chrf++")
    model, tokenizer = load_run(run_dir)
    dev = build_datasets(cfg.data, tokenizer).eval
    dev = dev[: max_examples or cfg.eval.max_examples or len(dev)]
    if not dev:
        raise TunelabError(f"{run_dir}: the run has no eval (dev) examples to tune decoding on")
    references = [example.response for example in dev]
    candidates = []
    for settings in grid or GRID:
        chosen = candidate_config(cfg.eval, settings, references)
        scores, samples = evaluate_with_predictions(
            model, tokenizer, dev, [metric], loss_batches=None,
            max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
            decoding=chosen.decoding(),
        )  # fmt: skip
        predictions = [sample["prediction"] for sample in samples]
        figures = {metric: scores[metric], **text_statistics(predictions, references)}
        candidates.append({"settings": decoding_settings(chosen), **figures})
    winner = choose(candidates, metric)
    record = {
        "metric": metric,
        "data": dev_description(cfg),
        "examples": len(dev),
        "candidates": candidates,
        "winner": winner,
        "previous": decoding_settings(cfg.eval),
    }
    store(run_dir, cfg, winner["settings"], record)
    return record


def candidate_config(base: EvalConfig, settings: dict, references: list[str]) -> EvalConfig:
    """The run's eval config with the decoding fields at PLAIN, then `settings`; the newline
    stop decided here (serving has no references to decide `auto` by)."""
    chosen = base.model_copy(update={**PLAIN, **settings})
    stop = resolve_stop_at_newline(chosen.stop_at_newline, references)
    return chosen.model_copy(update={"stop_at_newline": stop})


def decoding_settings(eval_cfg: EvalConfig) -> dict[str, Any]:
    return {name: getattr(eval_cfg, name) for name in DECODING_FIELDS}


def choose(candidates: list[dict], metric: str) -> dict:
    """Best `metric` among candidates with seq-rep-4 under the warning threshold (all when none
    is); ties go to the earlier, simpler setting."""
    calm = [c for c in candidates if c["seq-rep-4"] <= REPETITION_WARNING] or candidates
    return max(calm, key=lambda candidate: candidate[metric])


def store(run_dir: str | Path, cfg: RunConfig, settings: dict, record: dict) -> None:
    """Write the winner into RUN/config.yaml (validated first) and the record to decoding.json."""
    eval_cfg = EvalConfig.model_validate({**cfg.eval.model_dump(), **settings})
    files = RunFiles(Path(run_dir))
    atomic_write_json(files.root / "decoding.json", record)
    write_run_config(files, cfg.model_copy(update={"eval": eval_cfg}))


def dev_sources(cfg: RunConfig) -> list[tuple[str, str | None, str | None]]:
    """(config key, eval file, train file) of each source of the run's dev rows: `data`, or
    each trained task of a multi-task run (their eval rows follow one another, in order)."""
    if not cfg.data.tasks:
        return [("data.eval", cfg.data.eval, cfg.data.train)]
    return [(f"task {task.name!r} eval", task.eval, task.train)
            for task in eval_split_tasks(cfg.data.tasks)]  # fmt: skip


def dev_description(cfg: RunConfig) -> str:
    return "; ".join(
        evaluation or f"eval_fraction {cfg.data.eval_fraction} of {train}"
        for _, evaluation, train in dev_sources(cfg)
    )


def _refuse_test_split(cfg: RunConfig) -> None:
    for key, evaluation, _ in dev_sources(cfg):
        if evaluation and re.search(r"(^|[^a-z])test([^a-z]|$)", Path(evaluation).name.lower()):
            raise TunelabError(
                f"{key}: {evaluation} looks like a test split; decoding is tuned on dev data "
                "only (point it at the dev file)"
            )
