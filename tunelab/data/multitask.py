"""Multi-task data: every task's rows -> template-rendered examples -> one training mixture.

    task source -> rows -> (train rows, eval rows) -> field values per row
      train: the mixture's count of draws; each draw renders one template of the task's bank,
             zero-shot or (with `few_shot_share`) few-shot with exemplars from OTHER training
             rows of the same task
      eval:  one example per eval row, a non-inverted template, zero-shot unless `eval_shots`
             (exemplars again from training rows only; held-out tasks are always zero-shot)

A task without a `kind` is rendered by its `format` exactly as a single-task run would render
it. Everything is seeded by `data.seed`, so tasks that share a source file also share its
train/eval split (both directions of one translation file never see each other's eval rows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.build import cap, split
from tunelab.data.builtin import builtin_pairs, is_builtin
from tunelab.data.filters import filter_rows
from tunelab.data.formats import rows_to_examples
from tunelab.data.mixture import draw_rows, mixture_counts
from tunelab.data.readers import TEXT_KEY, Row, read_rows
from tunelab.data.template_bank import (
    Template,
    eval_templates,
    render_few_shot,
    task_templates,
)
from tunelab.data.templates import check_template, render_prompt
from tunelab.data.types import Datasets, Example
from tunelab.errors import DataError
from tunelab.task_config import KIND_FIELDS, OPTIONAL_FIELDS, TaskConfig, eval_split_tasks

Values = tuple[dict[str, str], str]  # (template field -> text, "file:line")


@dataclass
class PreparedTask:
    """One task's rows, ready to render: field values (kind set) or Examples (kind none)."""

    task: TaskConfig
    train: list[Any]
    eval: list[Any]
    templates: list[Template] = field(default_factory=list)
    options: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        return "held_out" if self.task.held_out else "replay" if self.task.replay else "train"


@dataclass
class MultiTaskData:
    """Training examples per task (the mixture) and evaluation examples per task."""

    tasks: list[PreparedTask]
    train: dict[str, list[Example]]
    eval: dict[str, list[Example]]
    counts: dict[str, int]

    def datasets(self) -> Datasets:
        """All training examples, and the eval examples of the trained (not held-out) tasks."""
        split = [task.name for task in eval_split_tasks([p.task for p in self.tasks])]
        return Datasets(
            train=[example for examples in self.train.values() for example in examples],
            eval=[example for name in split for example in self.eval[name]],
        )


def build_multitask(cfg: DataConfig, tokenizer: Any) -> MultiTaskData:
    """Read, split, render and mix every task of `cfg.tasks`; bad data fails here, early."""
    check_template(tokenizer, cfg)
    prepared = [prepare_task(task, cfg, tokenizer) for task in cfg.tasks]
    trained = [p for p in prepared if not p.task.held_out]
    for task in trained:
        if not task.train:
            raise DataError(f"task {task.task.name!r}: no training rows left after the eval split")
    counts = mixture_counts(
        {p.task.name: len(p.train) for p in trained},
        cfg.mixture,
        replay={p.task.name for p in trained if p.task.replay},
        weights={p.task.name: p.task.weight or 1.0 for p in trained},
        limit=cfg.max_train_examples,
    )
    rng = random.Random(f"mixture:{cfg.seed}")
    train = {
        p.task.name: [
            train_example(p, index, rng, tokenizer, cfg)
            for index in draw_rows(len(p.train), counts[p.task.name], rng)
        ]
        for p in trained
    }
    evals = {p.task.name: eval_examples(p, tokenizer, cfg) for p in prepared}
    return MultiTaskData(prepared, train, evals, counts)


def prepare_task(task: TaskConfig, cfg: DataConfig, tokenizer: Any) -> PreparedTask:
    """Split the task's rows and turn each into field values (or an Example for kind none).
    Caps apply last, so a classification task's options come from all of its rows."""
    train_rows, eval_rows = task_rows(task, cfg)
    if task.kind is None:
        task_cfg = format_config(task, cfg)
        train = [
            replace(e, task=task.name) for e in rows_to_examples(train_rows, tokenizer, task_cfg)
        ]
        evals = [
            replace(e, task=task.name) for e in rows_to_examples(eval_rows, tokenizer, task_cfg)
        ]
        return _capped(PreparedTask(task, train, evals), cfg)
    train = [(row_values(task, row, source), source) for row, source in train_rows]
    evals = [(row_values(task, row, source), source) for row, source in eval_rows]
    options: tuple[str, ...] = ()
    if task.kind == "classification":
        labels = {values["label"] for values, _ in train + evals}
        options = tuple(task.options or sorted(labels))
        for values, _ in train + evals:
            values["options"] = ", ".join(options)
    return _capped(PreparedTask(task, train, evals, task_templates(task), options), cfg)


def _capped(prepared: PreparedTask, cfg: DataConfig) -> PreparedTask:
    prepared.train = cap(prepared.train, prepared.task.max_rows, cfg.seed)
    prepared.eval = cap(prepared.eval, cfg.max_eval_examples, cfg.seed + 1)
    if not prepared.eval and prepared.task.held_out:
        raise DataError(f"task {prepared.task.name!r}: held_out but no eval rows (give `eval`)")
    return prepared


def task_rows(task: TaskConfig, cfg: DataConfig) -> tuple[list[Row], list[Row]]:
    """(train rows, eval rows): the eval source, or a seeded `eval_fraction` of the train rows."""
    rows = read_source(task.train, cfg, seed=cfg.seed) if task.train else []
    rows = filter_rows(rows, task.filter, f"task {task.name!r}") if rows else rows
    if task.eval is not None:
        eval_rows = read_source(task.eval, cfg, seed=cfg.seed + 1)
        eval_rows = filter_rows(eval_rows, task.filter, f"task {task.name!r} eval")
        if is_builtin(task.eval) and rows:
            seen = {str(row.get("prompt")) for row, _ in rows}
            eval_rows = [(row, where) for row, where in eval_rows if row["prompt"] not in seen]
    else:
        fraction = cfg.eval_fraction if task.eval_fraction is None else task.eval_fraction
        rows, eval_rows = split(rows, fraction, cfg.seed)
    return rows, eval_rows


def read_source(spec: str, cfg: DataConfig, *, seed: int) -> list[Row]:
    """Rows of a file, folder or `builtin:NAME` (as {"prompt", "response"})."""
    if is_builtin(spec):
        pairs = islice(builtin_pairs(spec, seed), cfg.builtin_size)
        return [
            ({"prompt": prompt, "response": response}, f"{spec}:{number}")
            for number, (prompt, response) in enumerate(pairs, start=1)
        ]
    return read_rows(Path(spec).expanduser())


def format_config(task: TaskConfig, cfg: DataConfig) -> DataConfig:
    """The data config a kind-less task's rows are rendered with: its format and columns."""
    update: dict[str, Any] = {"format": task.format, "tasks": None}
    for name in ("prompt", "response", "text", "messages"):
        if name in task.fields:
            update[f"{name}_field"] = task.fields[name]
    if task.train and Path(task.train).suffix.lower() == ".txt":
        update.update(format="text", text_field=TEXT_KEY)
    return cfg.model_copy(update=update)


def row_values(task: TaskConfig, row: dict[str, Any], source: str) -> dict[str, str]:
    """Template field -> text for one row, with the derived fields filled in."""
    values: dict[str, str] = {}
    for name in dict.fromkeys([*KIND_FIELDS[task.kind], *task.fields]):
        column = task.fields.get(name, name)
        value = row.get(column)
        if value is None or value == "":
            if name in OPTIONAL_FIELDS:
                values[name] = ""
                continue
            raise DataError(f"{source}: missing field {column!r} (task {task.name!r}, {name})")
        if isinstance(value, (dict, list)):
            raise DataError(
                f"{source}: field {column!r} should be text, got {type(value).__name__}"
            )
        values[name] = str(value).strip()
    if task.kind == "translation":
        values.update(source_language=task.source_language, target_language=task.target_language)
    if task.kind == "instruction":
        extra = values["input"]
        values["request"] = (
            f"{values['instruction']}\n\n{extra}" if extra else values["instruction"]
        )
    return values


def exemplars(rows: list[Values], skip: int | None, k: int, rng: random.Random) -> list[dict]:
    """k field-value dicts from training `rows`, never row `skip` (the example itself)."""
    candidates = [i for i in range(len(rows)) if i != skip]
    return [rows[i][0] for i in rng.sample(candidates, min(k, len(candidates)))]


def train_example(
    prepared: PreparedTask, index: int, rng: random.Random, tokenizer: Any, cfg: DataConfig
) -> Example:
    """Training row `index` rendered by a drawn template, zero- or few-shot."""
    if prepared.task.kind is None:
        return prepared.train[index]
    task = prepared.task
    values, source = prepared.train[index]
    template = rng.choice(prepared.templates)
    shots = []
    if task.shots and rng.random() < task.few_shot_share:
        shots = exemplars(prepared.train, index, task.shots, rng)
    prompt, response = render_few_shot(template, values, shots)
    return Example(render_prompt(prompt, tokenizer, cfg), response, source=source, task=task.name)


def eval_examples(prepared: PreparedTask, tokenizer: Any, cfg: DataConfig) -> list[Example]:
    """One example per eval row: a non-inverted template; exemplars (if any) from train rows."""
    task = prepared.task
    if task.kind is None:
        return prepared.eval
    rng = random.Random(f"{task.name}:eval:{cfg.seed}")
    templates = eval_templates(prepared.templates)
    shots = 0 if task.held_out else task.eval_shots
    examples = []
    for values, source in prepared.eval:
        template = rng.choice(templates)
        chosen = exemplars(prepared.train, None, shots, rng) if shots else []
        prompt, response = render_few_shot(template, values, chosen)
        label = values.get("label") if task.kind == "classification" else None
        examples.append(
            Example(
                render_prompt(prompt, tokenizer, cfg),
                response,
                label=label,
                source=source,
                options=prepared.options,
                task=task.name,
            )  # fmt: skip
        )
    return examples
