"""Template banks: several natural-language phrasings per task kind, one drawn per example.

FLAN (Wei et al. 2022, "Finetuned Language Models Are Zero-Shot Learners",
https://arxiv.org/abs/2109.01652) phrases every task through ~10 templates, some of them
"inverted" (given the answer, produce the input), and mixes zero-shot and few-shot renderings.
The banks below follow that recipe with text written for tunelab. Each kind has at least eight
templates; every template can be rendered zero-shot or few-shot (k exemplars, each rendered by
the same template, drawn from the task's own training rows by the caller).

Templates are `str.format` strings over the task's fields (`tunelab.task_config.KIND_FIELDS`
plus the derived ones: languages, `options`, `request`). The response is what is learned.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.task_config import ANSWER_FIELD, TaskConfig


@dataclass(frozen=True)
class Template:
    prompt: str
    response: str
    inverted: bool = False  # FLAN's "given the answer, write the input": training only


def _bank(rows: list[tuple[str, str]], inverted: list[tuple[str, str]]) -> tuple[Template, ...]:
    return tuple(Template(p, r) for p, r in rows) + tuple(Template(p, r, True) for p, r in inverted)


TRANSLATION = _bank(
    [
        ("Translate this {source_language} text into {target_language}.\n\n{source}", "{target}"),
        ("{source}\n\nWhat is that in {target_language}?", "{target}"),
        ("How would a {target_language} speaker say the following?\n{source}", "{target}"),
        ("{source_language}: {source}\n{target_language}:", "{target}"),
        (
            "Give the {target_language} version of this {source_language} sentence: {source}",
            "{target}",
        ),  # fmt: skip
        (
            "Render the text below in {target_language}, keeping its meaning.\n\n{source}",
            "{target}",
        ),  # fmt: skip
        ('I need this in {target_language}, please: "{source}"', "{target}"),
        ("Write the following {source_language} in {target_language}.\n{source}", "{target}"),
    ],
    [
        (
            "Here is a {target_language} sentence: {target}\n"
            "Write the {source_language} sentence it was translated from.",
            "{source}",
        ),  # fmt: skip
        (
            'The {target_language} text "{target}" is a translation. '
            "What did the original {source_language} say?",
            "{source}",
        ),  # fmt: skip
    ],
)

CLASSIFICATION = _bank(
    [
        ("{text}\n\nWhich topic does this text belong to? Choose from: {options}.", "{label}"),
        (
            "Classify the text below. Possible labels: {options}.\n\nText: {text}\nLabel:",
            "{label}",
        ),  # fmt: skip
        ("Text: {text}\nWhat is its category?", "{label}"),
        ("Read this and name its category in a word or two.\n{text}", "{label}"),
        ("Options: {options}\n\n{text}\n\nWhich option fits the text best?", "{label}"),
        ('What is the following about?\n"{text}"', "{label}"),
        ("Pick the label ({options}) that describes this: {text}", "{label}"),
        ("{text}\nCategory:", "{label}"),
    ],
    [
        ("Write a sentence about {label}.", "{text}"),
        ('Give an example of a text in the category "{label}".', "{text}"),
    ],
)

QA = _bank(
    [
        ("{question}", "{answer}"),
        ("Answer the following question.\n\n{question}", "{answer}"),
        ("Question: {question}\nAnswer:", "{answer}"),
        ("Solve this problem and give the answer.\n{question}", "{answer}"),
        ("Someone asked: {question}\nWhat is the correct answer?", "{answer}"),
        ("Think it through, then answer: {question}", "{answer}"),
        ("Q: {question}\nA:", "{answer}"),
        ("Please help me with this: {question}", "{answer}"),
    ],
    [
        ("Write a question whose answer is:\n{answer}", "{question}"),
        ("Answer: {answer}\nWhat question does this answer?", "{question}"),
    ],
)

INSTRUCTION = _bank(
    [
        ("{request}", "{output}"),
        ("Complete the task below.\n\n{request}", "{output}"),
        ("Instruction: {request}\nResponse:", "{output}"),
        ("Please do the following.\n{request}", "{output}"),
        ("Here is a request from a user:\n{request}\n\nWrite a helpful reply.", "{output}"),
        ("Task: {request}", "{output}"),
        ("Respond to this carefully: {request}", "{output}"),
        ("{request}\n\nAnswer:", "{output}"),
    ],
    [
        (
            "Here is a response: {output}\nWrite an instruction it would answer well.",
            "{instruction}",
        ),  # fmt: skip
        ("What request could have led to this answer?\n{output}", "{request}"),
    ],
)

BANKS: dict[str, tuple[Template, ...]] = {
    "translation": TRANSLATION,
    "classification": CLASSIFICATION,
    "qa": QA,
    "instruction": INSTRUCTION,
}
EXEMPLAR_SEPARATOR = "\n\n"


def task_templates(task: TaskConfig) -> list[Template]:
    """The task's templates: its own inline ones, or its kind's bank (inverted ones only when
    `task.inverted`). Inline strings learn the kind's answer field."""
    if task.templates is not None:
        answer = "{" + ANSWER_FIELD[task.kind] + "}"
        return [
            Template(t, answer) if isinstance(t, str) else Template(t.prompt, t.response or answer)
            for t in task.templates
        ]
    return [t for t in BANKS[task.kind] if task.inverted or not t.inverted]


def eval_templates(templates: list[Template]) -> list[Template]:
    """Evaluation asks the task's own question: inverted templates are left out."""
    return [t for t in templates if not t.inverted] or templates


def render(template: Template, values: dict[str, str]) -> tuple[str, str]:
    """(prompt, response) of one row; `values` holds every field the template names."""
    return template.prompt.format_map(values), template.response.format_map(values)


def render_few_shot(
    template: Template, values: dict[str, str], exemplars: list[dict[str, str]]
) -> tuple[str, str]:
    """(prompt, response) with each exemplar rendered by the same template (prompt, then its
    answer) before the query: the few-shot form of a zero-shot template."""
    shots = ["\n".join(render(template, exemplar)) for exemplar in exemplars]
    prompt, response = render(template, values)
    return EXEMPLAR_SEPARATOR.join([*shots, prompt]), response
