"""`tunelab eval`: score a finished run on its own eval split or on another file, with the
generated text described beyond the scores (intervals, repetition, length)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tunelab.config import DataConfig, EvalConfig
from tunelab.data import build_datasets, make_batches, tokenize_examples
from tunelab.errors import ConfigError
from tunelab.evaluate import evaluate_with_predictions
from tunelab.evaluate.generation_report import generation_report
from tunelab.io import atomic_write_json
from tunelab.run import load_run, read_run_config
from tunelab.run_config import RunConfig
from tunelab.task_config import eval_split_tasks


def evaluate_saved_run(
    run_dir: str | Path,
    *,
    metrics: list[str] | None = None,
    data: str | None = None,
    max_examples: int | None = None,
) -> dict[str, float]:
    """Metrics of a saved run; also written to RUN/eval.json."""
    scores, _ = evaluate_saved_run_report(
        run_dir, metrics=metrics, data=data, max_examples=max_examples
    )
    return scores


def evaluate_saved_run_report(
    run_dir: str | Path,
    *,
    metrics: list[str] | None = None,
    data: str | None = None,
    max_examples: int | None = None,
) -> tuple[dict[str, float], dict | None]:
    """(scores, generation report or None): RUN/eval.json holds both. The report gives chrF,
    chrF++ and BLEU with bootstrap intervals, seq-rep-4, distinct-2 and the length ratio."""
    cfg = read_run_config(run_dir)
    try:
        eval_cfg = EvalConfig(
            metrics=metrics or cfg.eval.metrics, max_examples=max_examples or cfg.eval.max_examples
        )
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None
    data_cfg = other_eval_file(cfg.data, data) if data else cfg.data
    model, tokenizer = load_run(run_dir)
    examples = build_datasets(data_cfg, tokenizer).eval
    batches = make_batches(
        tokenize_examples(examples, tokenizer, data_cfg),
        batch_size=cfg.eval.batch_size,
        tokens_per_batch=None,
        packing=False,
        pad_id=tokenizer.pad_token_id,
        seed=0,
        epoch=0,
        shuffle=False,
    )
    scores, samples = evaluate_with_predictions(
        model, tokenizer, examples, eval_cfg.metrics, loss_batches=batches,
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
        max_examples=eval_cfg.max_examples, decoding=cfg.eval.decoding(),
    )  # fmt: skip
    report = _report(cfg, eval_cfg.metrics, samples)
    record = {"data": data or "eval split", **scores, "generation": report}
    atomic_write_json(Path(run_dir) / "eval.json", record)
    return scores, report


def other_eval_file(data_cfg: DataConfig, path: str) -> DataConfig:
    """The run's data config with its eval rows read from `path`. A multi-task run's file is
    read as the first task of its eval split reads its rows (that task's eval rows come first
    in the run's own evaluation, so they are the ones it generates for)."""
    if not data_cfg.tasks:
        return data_cfg.model_copy(update={"eval": path})
    first = eval_split_tasks(data_cfg.tasks)[0]
    return data_cfg.model_copy(update={"tasks": [first.model_copy(update={"eval": path})]})


def _report(cfg: RunConfig, metrics: list[str], samples: list[dict]) -> dict | None:
    if not samples:
        return None
    options = dict(resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.bootstrap_seed)
    return generation_report(None, samples, metrics, **options)
