"""Typed settings of multi-task runs: `data.tasks` (one entry per task) and `data.mixture`.

Kept apart from `config.py` and light (pydantic only): the task kinds and the fields each kind's
templates may use live here, so a user's inline template is checked when the config is loaded,
before any data is read or any model is loaded. The template texts themselves live in
`tunelab.data.template_bank`; the mixing arithmetic in `tunelab.data.mixture`.

A task:
  kind       translation | classification | qa | instruction (picks the built-in template bank
             and the default metrics), or none: the row is rendered by `format` as a
             single-task run would render it
  fields     template field -> column of the source rows, e.g. {source: en, target: xho}
  held_out   evaluated zero-shot only, never trained on (FLAN's generalisation test)
  replay     a small fixed share of the mixture (`mixture.replay_share`) that protects what the
             base model knew, e.g. general English instructions
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.evaluate.metrics import METRICS

TaskKind = Literal["translation", "classification", "qa", "instruction"]

# The fields each kind's templates are written with; the first of `answer` is what is learned.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "translation": ("source", "target"),
    "classification": ("text", "label"),
    "qa": ("question", "answer"),
    "instruction": ("instruction", "input", "output"),
}
ANSWER_FIELD = {"translation": "target", "classification": "label", "qa": "answer",
                "instruction": "output"}  # fmt: skip
# Fields filled in by tunelab rather than read from a row.
DERIVED_FIELDS: dict[str, tuple[str, ...]] = {
    "translation": ("source_language", "target_language"),
    "classification": ("options",),
    "qa": (),
    "instruction": ("request",),  # the instruction, then the input when there is one
}
OPTIONAL_FIELDS = {"input"}  # may be missing or empty in a row
DEFAULT_METRICS = {
    "translation": ["loss", "chrf++"],
    "classification": ["loss", "accuracy", "option_accuracy"],
    "qa": ["loss", "exact_match", "chrf"],
    "instruction": ["loss", "rougeL"],
    None: ["loss"],
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def template_fields(template: str) -> list[str]:
    """Names in `{braces}` of a str.format template; ValueError for unbalanced braces."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            if not name.isidentifier():
                raise ValueError(
                    f"{{{name}}} is not a field name (write literal braces as {{{{ }}}})"
                )
            names.append(name)
    return names


class RowFilter(_Section):
    """Keep a row only if its numeric `field` lies in [min, max], e.g. an alignment score."""

    field: str = Field(description="the column to test (a number, or text holding one)")
    min: float | None = Field(None, description="keep rows whose value is at least this")
    max: float | None = Field(None, description="keep rows whose value is at most this")

    @model_validator(mode="after")
    def _bounded(self) -> RowFilter:
        if self.min is None and self.max is None:
            raise ValueError(f"filter on {self.field!r}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"filter on {self.field!r}: min {self.min} > max {self.max}")
        return self

    def describe(self) -> str:
        low = "" if self.min is None else f"{self.min:g} <= "
        high = "" if self.max is None else f" <= {self.max:g}"
        return f"{low}{self.field}{high}"


class UserTemplate(_Section):
    prompt: str = Field(description="the model input, with {field}s")
    response: str | None = Field(None, description="what is learned; default: {answer field}")


class TaskConfig(_Section):
    name: str = Field(description="the task's name in reports and summary.json")
    train: str | None = Field(None, description="file path (jsonl/json/csv/tsv/txt/parquet), "
                              "a datasets save_to_disk folder, or builtin:NAME")  # fmt: skip
    eval: str | None = Field(None, description="eval source; else a seeded eval_fraction split")
    eval_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="default: data's")
    kind: TaskKind | None = Field(None, description="template bank; none: render by `format`")
    format: Literal["text", "pairs", "instruction", "chat"] = "pairs"
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="template field -> column, e.g. {source: en, target: xho}; with kind none: "
        "prompt/response/text/messages -> column",
    )
    source_language: str | None = Field(None, description="translation: named in templates")
    target_language: str | None = Field(None, description="translation: named in templates")
    options: list[str] | None = Field(None, description="classification: the labels (default: "
                                      "those in the training rows)")  # fmt: skip
    templates: list[str | UserTemplate] | None = Field(
        None, description="own templates instead of the kind's bank; {field}s checked at load"
    )
    shots: int = Field(2, ge=0, description="exemplars in a few-shot training prompt")
    few_shot_share: float = Field(
        0.25, ge=0, le=1, description="training prompts that are few-shot"
    )
    eval_shots: int = Field(0, ge=0, description="exemplars (from training rows) in eval prompts")
    inverted: bool = Field(True, description="train on the bank's inverted templates too")
    metrics: list[str] | None = Field(None, description="default: by kind")
    weight: float | None = Field(None, gt=0, description="mixture.strategy=weights")
    held_out: bool = Field(False, description="evaluated zero-shot only, never trained")
    replay: bool = Field(False, description="gets mixture.replay_share of the mixture")
    max_rows: int | None = Field(None, gt=0, description="seeded cap on the rows read")
    filter: RowFilter | None = Field(
        None, description="keep only rows whose numeric field is in range (train and eval)"
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str] | None) -> list[str] | None:
        unknown = [m for m in value or [] if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(sorted(METRICS))}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.train is None and self.eval is None:
            raise ValueError(f"task {self.name!r}: give `train` or `eval` (a source)")
        if self.train is None and not self.held_out:
            raise ValueError(
                f"task {self.name!r}: no `train` source (only held_out tasks may omit it)"
            )
        if self.held_out and self.replay:
            raise ValueError(f"task {self.name!r}: held_out and replay exclude each other")
        if self.kind == "translation" and not (self.source_language and self.target_language):
            raise ValueError(f"task {self.name!r}: translation needs source_language and "
                             "target_language (they are named in the templates)")  # fmt: skip
        if self.templates is not None and self.kind is None:
            raise ValueError(f"task {self.name!r}: templates need a `kind` (their fields)")
        for index, template in enumerate(self.templates or []):
            self._check_template(index, template)
        return self

    def available_fields(self) -> list[str]:
        """Fields a template of this task may use: the kind's, the configured ones, derived."""
        if self.kind is None:
            return list(self.fields)
        own = [*KIND_FIELDS[self.kind], *DERIVED_FIELDS[self.kind]]
        return list(dict.fromkeys([*own, *self.fields]))

    def _check_template(self, index: int, template: str | UserTemplate) -> None:
        parts = [template] if isinstance(template, str) else [template.prompt, template.response]
        allowed = self.available_fields()
        for text in (part for part in parts if part is not None):
            try:
                names = template_fields(text)
            except ValueError as exc:
                raise ValueError(f"task {self.name!r} template {index} ({text!r}): {exc}") from None
            missing = [name for name in names if name not in allowed]
            if missing:
                raise ValueError(
                    f"task {self.name!r} template {index} ({text!r}) uses field {missing[0]!r}, "
                    f"which the task does not have (fields: {', '.join(allowed)})"
                )

    def task_metrics(self) -> list[str]:
        return list(self.metrics or DEFAULT_METRICS[self.kind])


class MixtureConfig(_Section):
    strategy: Literal["proportional", "temperature", "weights"] = Field(
        "proportional",
        description="proportional: by examples, each capped (FLAN) | temperature: rate ∝ "
        "size^(1/T) (T5) | weights: each task's `weight`",
    )
    cap: int | None = Field(3000, gt=0, description="per-task example cap (proportional, temp.)")
    temperature: float = Field(
        2.0, ge=1.0, description="temperature strategy: T (1 = proportional)"
    )
    replay_share: float = Field(0.05, ge=0, lt=1, description="share of the mixture for replay")
    total: int | None = Field(None, gt=0, description="examples in the mixture; default: the sum "
                              "of the capped task sizes")  # fmt: skip


def eval_split_tasks(tasks: list[TaskConfig]) -> list[TaskConfig]:
    """The tasks whose eval rows make up a multi-task run's eval split, in that order: every
    task but the held-out ones (those are scored zero-shot, on their own)."""
    return [task for task in tasks if not task.held_out]


def check_tasks(tasks: list[TaskConfig] | None, mixture: MixtureConfig, changed: set[str]) -> None:
    """Cross-task rules: unique names, something to train, weights when asked for, and no
    single-task source keys changed beside `tasks` (they would be silently ignored)."""
    if tasks is None:
        return
    clash = sorted(changed & {"train", "eval", "format", "prompt_field", "response_field",
                              "filter"})  # fmt: skip
    if clash:
        raise ValueError(f"data.{clash[0]} has no effect with data.tasks: set it per task")
    names = [task.name for task in tasks]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"task name {doubled[0]!r} is used twice")
    trained = [task for task in tasks if not task.held_out and not task.replay]
    if not trained:
        raise ValueError("data.tasks: no task to train on (all are held_out or replay)")
    if mixture.strategy == "weights":
        unweighted = [task.name for task in trained if task.weight is None]
        if unweighted:
            raise ValueError(f"mixture.strategy=weights: task {unweighted[0]!r} has no `weight`")
