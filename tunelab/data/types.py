"""The records that flow through the data pipeline.

file rows -> `Example` (prompt + response text, templates applied)
          -> `Tokenized` (token ids + labels with -100 on positions that carry no loss)
          -> batches: dicts of tensors the model and the loss take directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100  # the label of a token that is not learned (PyTorch's ignore_index)


@dataclass(frozen=True)
class Example:
    """One training or evaluation example.

    `prompt` is the fully rendered model input before the answer (chat template or text
    template already applied; "" for plain language modelling); `response` is the text the
    model learns to produce (the whole text for format=text). `label` is set for
    classification-style data so accuracy can be scored; `source` names file:line for errors.
    `options` lists a classification task's labels (option scoring); `task` names the task of
    a multi-task run.
    """

    prompt: str
    response: str
    label: str | None = None
    source: str = ""
    options: tuple[str, ...] = ()
    task: str = ""


@dataclass(frozen=True)
class Tokenized:
    """Token ids of prompt+response(+EOS) and labels: -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Datasets:
    train: list[Example]
    eval: list[Example] = field(default_factory=list)
