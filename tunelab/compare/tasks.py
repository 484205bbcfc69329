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

from pathlib import Path
from typing import Any

from tunelab.compare.samples import run_samples
from tunelab.evaluate.generation_report import compare_samples, generation_report
from tunelab.evaluate.significance import SACREBLEU_METRICS

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


def row_blocks(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What a result row keeps for the per-task table: summary.json's tasks and forgetting
    blocks, and per generative task the scores with bootstrap intervals and the repetition
    of the outputs, before and after (from the run's samples-*-tasks.jsonl)."""
    tasks = summary.get("tasks")
    return {"tasks": tasks, "forgetting_probes": summary.get("forgetting"),
            "task_generation": task_generation(run_dir, tasks or {})}  # fmt: skip


def task_generation(run_dir: Path, tasks: dict[str, Any]) -> dict[str, dict]:
    """{task: generation_report(before, after)} for the tasks scored with chrF/BLEU."""
    reports = {}
    for name, block in tasks.items():
        metrics = [m for m in block.get("after", {}) if m in SACREBLEU_METRICS]
        after = run_samples(run_dir, "after", name) if metrics else []
        if after:
            before = run_samples(run_dir, "before", name) or None
            reports[name] = generation_report(before, after, metrics)
    return reports


def paired_between_variants(rows: list[dict[str, Any]], quality: str) -> list[dict[str, Any]]:
    """The paired bootstrap of each finished variant against the first one on the quality
    task's eval sentences (same prompts and references), when the quality is a task's
    chrF/BLEU; else []. Each: variant, against, task, metric, and the test's baseline and
    system scores, delta (system - baseline), its interval and p_value."""
    task, metric = split_quality(quality)
    done = [row for row in rows if row["status"] == "finished"]
    if task is None or metric not in SACREBLEU_METRICS or len(done) < 2:
        return []
    samples = {row["variant"]: run_samples(Path(row["run_dir"]), "after", task) for row in done}
    first, *others = done
    pairs = []
    for row in others:
        try:
            test = compare_samples(samples[first["variant"]], samples[row["variant"]], [metric])
        except ValueError:  # the two variants generated for different eval rows
            continue
        pairs.append({"variant": row["variant"], "against": first["variant"], "task": task,
                      "metric": metric, **test[metric]})  # fmt: skip
    return pairs


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
    pairs = _task_metrics(with_tasks)
    for task, metric in pairs:
        befores = [row["tasks"].get(task, {}).get("before", {}).get(metric) for row in with_tasks]
        cells = [_after_cell(row, task, metric) for row in with_tasks]
        rows.append([task, metric, _base_cell(befores, _interval(with_tasks[0], task, metric)),
                     *cells])  # fmt: skip
        if metric == _last_metric(pairs, task) and _has_generation(with_tasks, task):
            rows += [_text_row(with_tasks, task, name) for name in TEXT_ROWS]
    for probe in _probes(with_tasks):
        scores = [(row.get("forgetting_probes") or {}).get(probe, {}) for row in with_tasks]
        base = _base_cell([score.get("before") for score in scores])
        rows.append(["forgetting", probe, base, *(_probe_cell(score) for score in scores)])
    return headers, rows


def table_notes() -> str:
    return (
        "Per task: the base model's score, then each variant's after training. (zero-shot): "
        "the variant never trained on the task; (replay): a small fixed share of its mixture. "
        "[low, high]: 95 % bootstrap interval over the eval sentences; seq-rep-4: share of "
        "repeated 4-grams within an output (%), length ratio: output/reference length. "
        "Forgetting: perplexity of general text before → after (lower is better; a rise is "
        "forgetting), with the relative change."
    )


def pair_sentences(results: dict[str, Any]) -> list[str]:
    """One line per paired test between variants."""
    return [
        f"{p['variant']} vs {p['against']} on {p['task']} {p['metric']}: "
        f"{p['delta']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}], p = {p['p_value']:.3f}"
        for p in results.get("task_pairs", [])
    ]


def markdown_section(results: dict[str, Any]) -> list[str]:
    headers, rows = task_table(results)
    if not rows:
        return []
    lines = ["", "## Per task", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    pairs = pair_sentences(results)
    paired = ["", "Paired bootstrap between variants (same eval sentences):", ""] if pairs else []
    return [*lines, "", table_notes(), *paired, *(f"- {line}" for line in pairs)]


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


TEXT_ROWS = ("seq-rep-4", "length_ratio")


def _interval(row: dict[str, Any], task: str, metric: str, side: str = "before") -> str:
    """ " [low, high]" of the metric's bootstrap interval, where the run has one."""
    found = (row.get("task_generation") or {}).get(task, {}).get(side, {}).get(metric)
    if not isinstance(found, dict):
        return ""
    return f" [{_format(found['low'])}, {_format(found['high'])}]"


def _last_metric(pairs: list[tuple[str, str]], task: str) -> str:
    return [metric for name, metric in pairs if name == task][-1]


def _has_generation(rows: list[dict[str, Any]], task: str) -> bool:
    return any((row.get("task_generation") or {}).get(task) for row in rows)


def _text_row(rows: list[dict[str, Any]], task: str, name: str) -> list[str]:
    """A text statistic of the task's outputs: the base model's, then each variant's."""
    reports = [(row.get("task_generation") or {}).get(task, {}) for row in rows]
    base = next((r["before"][name] for r in reports if name in r.get("before", {})), None)
    cells = ["-" if name not in r.get("after", {}) else _format(r["after"][name]) for r in reports]
    return [task, name, "-" if base is None else _format(base), *cells]


def _base_cell(values: list[float | None], interval: str = "") -> str:
    """The base model's score; every variant measured it on the same rows, so they agree —
    where they do not (other eval rows or templates), the spread is shown, not hidden."""
    known = [value for value in values if value is not None]
    if not known:
        return "-"
    if max(known) - min(known) <= 1e-6 * max(1.0, abs(known[0])):
        return _format(known[0]) + interval
    return f"{_format(min(known))}–{_format(max(known))} (differs)"


def _after_cell(row: dict[str, Any], task: str, metric: str) -> str:
    scores = row["tasks"].get(task)
    if not scores or scores.get("after", {}).get(metric) is None:
        return "-"
    value = _format(scores["after"][metric]) + _interval(row, task, metric, "after")
    return value + ROLE_TAGS.get(scores.get("role", "train"), "")


def _probe_cell(score: dict[str, Any]) -> str:
    if score.get("after") is None:
        return "-"
    relative = score.get("relative_change")
    change = "" if relative is None else f" ({100.0 * relative:+.1f} %)"
    return _format(score["after"]) + change


def _format(value: float) -> str:
    return f"{value:.4g}"
