"""Per-task results of a comparison of multi-task runs (`data.tasks`): every task's metrics
before (the base model) and after each variant, with the task's role in that variant, and the
forgetting probes (perplexity of general English prose and of general instructions) beside them.

A variant that does not train on a task marks it `held_out`, so the task is still evaluated,
zero-shot: that is how one table shows what a translation-only run did to topic classification
and what a mixture did to translation. The quality metric of a comparison may name one task's
metric as `TASK/METRIC` (e.g. `translate-en-xh/chrf++`): the charts and Pareto fronts then rank
by it, since a mixture's overall eval loss covers other tasks than a single-task run's.
"""

from __future__ import annotations

from typing import Any

TASK_SEPARATOR = "/"
ROLE_TAGS = {"train": "", "replay": " (replay)", "held_out": " (zero-shot)"}


def split_quality(quality: str) -> tuple[str | None, str]:
    """`translate-en-xh/chrf++` -> ("translate-en-xh", "chrf++"); `loss` -> (None, "loss")."""
    task, separator, metric = quality.rpartition(TASK_SEPARATOR)
    return (task, metric) if separator else (None, quality)


def quality_pair(summary: dict[str, Any], quality: str) -> tuple[float | None, float | None]:
    """(before, after) of the quality metric in a run's summary.json."""
    task, metric = split_quality(quality)
    if task is None:
        return summary["before"].get(metric), summary["after"].get(metric)
    scores = (summary.get("tasks") or {}).get(task, {})
    return scores.get("before", {}).get(metric), scores.get("after", {}).get(metric)


def row_blocks(summary: dict[str, Any]) -> dict[str, Any]:
    """What a result row keeps of summary.json for the per-task table."""
    return {"tasks": summary.get("tasks"), "forgetting_probes": summary.get("forgetting")}


def task_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): task, metric, base model, then each finished variant's value after
    training tagged with the task's role there; forgetting probes last. Empty when no run
    has per-task results."""
    done = [row for row in results["methods"] if row["status"] == "finished"]
    with_tasks = [row for row in done if row.get("tasks")]
    if not with_tasks:
        return [], []
    headers = ["task", "metric", "base", *(row["variant"] for row in with_tasks)]
    rows = []
    for task, metric in _task_metrics(with_tasks):
        befores = [row["tasks"].get(task, {}).get("before", {}).get(metric) for row in with_tasks]
        cells = [_after_cell(row["tasks"].get(task), metric) for row in with_tasks]
        rows.append([task, metric, _base_cell(befores), *cells])
    for probe in _probes(with_tasks):
        scores = [(row.get("forgetting_probes") or {}).get(probe, {}) for row in with_tasks]
        base = _base_cell([score.get("before") for score in scores])
        rows.append(["forgetting", probe, base, *(_probe_cell(score) for score in scores)])
    return headers, rows


def table_notes() -> str:
    return (
        "Per task: the base model's score, then each variant's after training. (zero-shot): "
        "the variant never trained on the task; (replay): a small fixed share of its mixture. "
        "Forgetting: perplexity of general text before → after (lower is better; a rise is "
        "forgetting), with the relative change."
    )


def markdown_section(results: dict[str, Any]) -> list[str]:
    headers, rows = task_table(results)
    if not rows:
        return []
    lines = ["", "## Per task", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*lines, "", table_notes()]


def _task_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every (task, metric) any run reports, in the order the runs list them."""
    pairs: dict[tuple[str, str], None] = {}
    for row in rows:
        for task, scores in row["tasks"].items():
            for metric in [*scores.get("before", {}), *scores.get("after", {})]:
                pairs[(task, metric)] = None
    return list(pairs)


def _probes(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("forgetting_probes") or {}))
    return list(names)


def _base_cell(values: list[float | None]) -> str:
    """The base model's score; every variant measured it on the same rows, so they agree —
    where they do not (other eval rows or templates), the spread is shown, not hidden."""
    known = [value for value in values if value is not None]
    if not known:
        return "-"
    if max(known) - min(known) <= 1e-6 * max(1.0, abs(known[0])):
        return _format(known[0])
    return f"{_format(min(known))}–{_format(max(known))} (differs)"


def _after_cell(scores: dict[str, Any] | None, metric: str) -> str:
    if not scores or scores.get("after", {}).get(metric) is None:
        return "-"
    return _format(scores["after"][metric]) + ROLE_TAGS.get(scores.get("role", "train"), "")


def _probe_cell(score: dict[str, Any]) -> str:
    if score.get("after") is None:
        return "-"
    relative = score.get("relative_change")
    change = "" if relative is None else f" ({100.0 * relative:+.1f} %)"
    return _format(score["after"]) + change


def _format(value: float) -> str:
    return f"{value:.4g}"
