"""Before/after evaluation of a run: the configured metrics on the eval split, with the
generations kept beside the run for people to read, and what those generations show beyond
the scores (intervals, the paired test, repetition) for summary.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunelab.evaluate import evaluate_with_predictions
from tunelab.io import atomic_write_text, read_jsonl
from tunelab.training.loss import token_loss_sum
from tunelab.training.tasks import SUBJECT, pooled_split_scores


def evaluate_run(model, tokenizer, plan, cfg, files, *, tag: str) -> dict[str, Any]:
    """Score `model` on the run's eval data; write `samples-<tag>.jsonl`; return the metrics."""
    if not plan.eval_examples:
        return {}
    scores, samples = evaluate_with_predictions(
        model,
        tokenizer,
        plan.eval_examples,
        cfg.eval.metrics,
        loss_batches=plan.eval_batches,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        max_examples=cfg.eval.max_examples,
        decoding=cfg.eval.decoding(),
    )
    if samples:
        import json

        lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        atomic_write_text(files.samples(tag), lines)
    return scores


def split_scores(model, tokenizer, plan, cfg, files, extras_result, *, tag: str,
                 say: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """The eval split's scores: pooled from the tasks' own scores where a multi-task run's
    split asks only for loss (training/tasks.py), else evaluated. `say` (e.g. the reporter's
    `message`) is told which of the two happens."""
    say = say or (lambda text: None)
    pooled = pooled_split_scores(extras_result or {"tasks": {}}, plan.extras, cfg.eval.metrics)
    if pooled is not None and plan.eval_examples:
        say(f"{SUBJECT[tag]}: the eval split's loss is pooled from the trained tasks' losses")
        return pooled
    if plan.eval_examples:
        say(f"evaluating {SUBJECT[tag]} on {len(plan.eval_examples)} examples")
    return evaluate_run(model, tokenizer, plan, cfg, files, tag=tag)


def generation_summary(cfg, files) -> dict[str, Any] | None:
    """summary.json's `generation`: intervals, paired test after vs before, seq-rep-4,
    distinct-2, length ratio and repetition warnings, from the samples files; None when the
    run generated nothing."""
    from tunelab.evaluate.generation_report import generation_report

    if not files.samples("after").exists():
        return None
    before_path = files.samples("before")
    before = read_jsonl(before_path) if before_path.exists() else None
    return generation_report(
        before,
        read_jsonl(files.samples("after")),
        cfg.eval.metrics,
        resamples=cfg.eval.bootstrap_resamples,
        seed=cfg.eval.bootstrap_seed,
    )


@torch.inference_mode()
def periodic_eval_loss(model, plan, device) -> float:
    """The mean token loss on the eval batches, during training (`train.eval_every`)."""
    model.eval()
    total, count = 0.0, 0
    for batch in plan.eval_batches:
        loss_sum, n = token_loss_sum(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + float(loss_sum), count + n
    return total / max(count, 1)
