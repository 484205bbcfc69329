"""What the loop evaluates beyond the eval split: each task of a multi-task run, and forgetting.

plan_tasks     data.tasks -> the training mixture (tokenised), the combined eval split, one
               `TaskEval` per task and the mixture report (examples and tokens per task)
plan_extras    the per-task evaluations plus the forgetting probes, built before any write
evaluate_extras  {"tasks": {task: metrics}, "forgetting": {probe: perplexity}} for one model;
               the loop runs it on the base model ("before") and on the trained one ("after")
extras_summary   summary.json's `tasks`, `tasks_macro`, `mixture` and `forgetting` blocks

Held-out tasks are in `tasks` with role held_out: evaluated, never trained, zero-shot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.batching import make_batches
from tunelab.data.mixture import format_report, mixture_report
from tunelab.data.multitask import build_multitask
from tunelab.data.tokenize import tokenize_examples
from tunelab.data.types import Datasets, Example
from tunelab.evaluate.forgetting import (
    forgetting_batches,
    forgetting_perplexities,
    forgetting_summary,
)
from tunelab.evaluate.metrics import perplexity_from_loss
from tunelab.io import atomic_write_text
from tunelab.run_config import RunConfig
from tunelab.training.loss import labelled_tokens
from tunelab.training.shared_eval import SharedScores, probes_key, task_key

log = logging.getLogger(__name__)
SUBJECT = {"before": "the base model", "after": "the trained model"}  # by evaluation tag


@dataclass
class TaskEval:
    name: str
    role: str  # train | replay | held_out
    metrics: list[str]
    examples: list[Example]
    batches: list[dict]


@dataclass
class Extras:
    tasks: list[TaskEval] = field(default_factory=list)
    forgetting: dict[str, list] = field(default_factory=dict)
    mixture: list[dict] | None = None


def plan_tasks(
    cfg: RunConfig, tokenizer: Any, packing: bool, capacity: int
) -> tuple[Datasets, list, Extras]:
    """(datasets, tokenised training mixture, extras with per-task evals and the mixture);
    `capacity`: tokens per packed eval row."""
    data = build_multitask(cfg.data, tokenizer)
    train_items, tokens = [], {}
    for name, examples in data.train.items():
        items = tokenize_examples(examples, tokenizer, cfg.data)
        tokens[name] = sum(len(item) for item in items)
        train_items += items
    extras = Extras()
    for prepared in data.tasks:
        name = prepared.task.name
        examples = data.eval[name]
        items = tokenize_examples(examples, tokenizer, cfg.data)
        batches = make_batches(items, batch_size=cfg.eval.batch_size, tokens_per_batch=capacity,
                               packing=packing, pad_id=tokenizer.pad_token_id, seed=0, epoch=0,
                               shuffle=False)  # fmt: skip
        extras.tasks.append(
            TaskEval(name, prepared.role, prepared.task.task_metrics(), examples, batches)
        )
    roles = {p.task.name: p.role for p in data.tasks}
    extras.mixture = mixture_report(
        data.counts, {p.task.name: len(p.train) for p in data.tasks}, tokens, roles,
        {p.task.name: len(p.eval) for p in data.tasks},
    )  # fmt: skip
    log.info("task mixture:\n%s", format_report(extras.mixture))
    return data.datasets(), train_items, extras


def plan_extras(cfg: RunConfig, tokenizer: Any, extras: Extras | None) -> Extras:
    """The task evaluations (if any) plus the forgetting probes of `eval.forgetting`."""
    extras = extras or Extras()
    extras.forgetting = forgetting_batches(tokenizer, cfg.data, cfg.eval)
    return extras


def evaluate_extras(
    model, tokenizer, extras: Extras, cfg: RunConfig, files, *, tag: str,
    shared: SharedScores | None = None, say: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Every task's metrics and the forgetting perplexities of `model`; writes the tasks'
    generations to samples-<tag>-tasks.jsonl for people to read. With `shared` (the base
    model's scores of earlier runs, see training/shared_eval.py), a task or probe set scored
    before under the same key is read back instead of evaluated again. `say` (e.g. the
    reporter's `message`) is told of each evaluation as it starts, not of those read back."""
    say = say or (lambda text: None)
    tasks, samples = {}, []
    for task in extras.tasks:
        if not task.examples:  # a trained task without eval rows (eval_fraction 0): no scores
            tasks[task.name] = {}
            continue

        def evaluate(task=task) -> dict:
            say(f"evaluating {SUBJECT[tag]} on task {task.name} ({len(task.examples)} examples)")
            return _evaluate_task(model, tokenizer, task, cfg)

        entry = _read_or_compute(
            shared, lambda task=task: task_key(cfg, task.metrics, task.examples, task.batches),
            evaluate,
        )  # fmt: skip
        tasks[task.name] = entry["scores"]
        samples += [{"task": task.name, **sample} for sample in entry["samples"]]
    if samples:
        lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        atomic_write_text(files.samples(f"{tag}-tasks"), lines)
    return {"tasks": tasks, "forgetting": _probe_scores(model, extras, cfg, shared, say, tag)}


def _evaluate_task(model, tokenizer, task: TaskEval, cfg: RunConfig) -> dict[str, Any]:
    from tunelab.evaluate import evaluate_with_predictions

    scores, generated = evaluate_with_predictions(
        model, tokenizer, task.examples, task.metrics, loss_batches=task.batches,
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
        max_examples=cfg.eval.max_examples, decoding=cfg.eval.decoding(),
    )  # fmt: skip
    return {"name": task.name, "scores": scores, "samples": generated}


def _probe_scores(model, extras: Extras, cfg: RunConfig, shared, say, tag: str) -> dict:
    if not extras.forgetting:
        return {}

    def evaluate() -> dict:
        say(f"evaluating {SUBJECT[tag]} on the forgetting probes")
        return {"name": "forgetting", "scores": forgetting_perplexities(model, extras.forgetting)}

    entry = _read_or_compute(shared, lambda: probes_key(cfg, extras.forgetting), evaluate)
    return entry["scores"]


def _read_or_compute(shared: SharedScores | None, key, compute) -> dict[str, Any]:
    """`compute()`, or the entry `shared` holds under `key()` (stored there when computed)."""
    if shared is None:
        return compute()
    name = key()
    entry = shared.get(name)
    if entry is None:
        entry = compute()
        shared.put(name, entry)
    return entry


def pooled_split_scores(result: dict, extras: Extras, metrics: list[str]) -> dict | None:
    """The eval split's loss and perplexity pooled from the trained tasks' own losses (the
    split is their eval rows, so scoring it again would compute the same losses twice):
    sum of loss x labelled tokens over the tasks / all their labelled tokens. None where the
    split asks for more than loss and perplexity, or a trained task has no loss of its own."""
    trained = [task for task in extras.tasks if task.role != "held_out" and task.examples]
    if not trained or not set(metrics) <= {"loss", "perplexity"}:
        return None
    if any("loss" not in result["tasks"].get(task.name, {}) for task in trained):
        return None
    counts = [sum(labelled_tokens(batch) for batch in task.batches) for task in trained]
    losses = [result["tasks"][task.name]["loss"] for task in trained]
    loss = sum(value * count for value, count in zip(losses, counts, strict=True)) / sum(counts)
    return {"loss": loss, "perplexity": perplexity_from_loss(loss)}  # as evaluate() gives them


def extras_summary(before: dict | None, after: dict, extras: Extras) -> dict[str, Any]:
    """summary.json's blocks: per-task before/after, macro averages, mixture, forgetting."""
    before = before or {}
    summary: dict[str, Any] = {
        "forgetting": forgetting_summary(before.get("forgetting", {}), after["forgetting"])
    }
    if not extras.tasks:
        return summary
    tasks = {
        task.name: {
            "role": task.role,
            "zero_shot": task.role == "held_out",
            "eval_examples": len(task.examples),
            "before": before.get("tasks", {}).get(task.name, {}),
            "after": after["tasks"][task.name],
        }
        for task in extras.tasks
    }
    summary.update(tasks=tasks, tasks_macro=macro_averages(tasks), mixture=extras.mixture)
    return summary


def macro_averages(tasks: dict[str, dict]) -> dict[str, dict]:
    """Mean of each metric over the trained tasks (train + replay) and over the held-out ones,
    before and after; a metric is averaged over the tasks that report it."""
    groups = {"trained": [t for t in tasks.values() if t["role"] != "held_out"],
              "held_out": [t for t in tasks.values() if t["role"] == "held_out"]}  # fmt: skip
    result = {}
    for group, members in groups.items():
        if members:
            result[group] = {"tasks": len(members),
                             "before": _mean_metrics([m["before"] for m in members]),
                             "after": _mean_metrics([m["after"] for m in members])}  # fmt: skip
    return result


def _mean_metrics(scores: list[dict[str, float]]) -> dict[str, float]:
    names = list(dict.fromkeys(name for score in scores for name in score))
    return {
        name: sum(s[name] for s in scores if name in s) / sum(name in s for s in scores)
        for name in names
    }
