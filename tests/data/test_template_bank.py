"""Template banks: enough phrasings per kind, inverted ones, fields that exist, rendering
(zero- and few-shot), and user templates checked at load time."""

from __future__ import annotations

import pytest

from tunelab.data.template_bank import (
    BANKS,
    eval_templates,
    render,
    render_few_shot,
    task_templates,
)
from tunelab.errors import ConfigError
from tunelab.run_config import load_config
from tunelab.task_config import DERIVED_FIELDS, KIND_FIELDS, TaskConfig, template_fields

TRANSLATION = dict(name="t", train="x.jsonl", kind="translation", source_language="English",
                   target_language="isiXhosa")  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BANKS))
def test_every_bank_has_eight_templates_and_inverted_ones(kind):
    bank = BANKS[kind]
    assert len([t for t in bank if not t.inverted]) >= 8
    assert len([t for t in bank if t.inverted]) >= 2
    allowed = {*KIND_FIELDS[kind], *DERIVED_FIELDS[kind]}
    for template in bank:
        assert set(template_fields(template.prompt)) <= allowed, template
        assert set(template_fields(template.response)) <= allowed, template
    assert len({t.prompt for t in bank}) == len(bank)  # no duplicates


def test_translation_templates_name_the_languages():
    values = {"source": "Good morning.", "target": "Molo.", "source_language": "English",
              "target_language": "isiXhosa"}  # fmt: skip
    for template in eval_templates(list(BANKS["translation"])):
        prompt, response = render(template, values)
        assert "isiXhosa" in prompt and "Good morning." in prompt and response == "Molo."
    inverted = [t for t in BANKS["translation"] if t.inverted]
    prompt, response = render(inverted[0], values)
    assert "Molo." in prompt and response == "Good morning."


def test_few_shot_puts_exemplars_before_the_query():
    template = BANKS["qa"][2]  # "Question: ...\nAnswer:"
    shots = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}]
    prompt, response = render_few_shot(template, {"question": "3+3?", "answer": "6"}, shots)
    assert (
        prompt
        == "Question: 1+1?\nAnswer:\n2\n\nQuestion: 2+2?\nAnswer:\n4\n\nQuestion: 3+3?\nAnswer:"
    )
    assert response == "6"


def test_inverted_templates_can_be_left_out():
    with_inverted = task_templates(TaskConfig(**TRANSLATION))
    without = task_templates(TaskConfig(**TRANSLATION, inverted=False))
    assert len(with_inverted) == len(without) + 2 and not any(t.inverted for t in without)


def test_user_templates_learn_the_answer_field():
    own = ["{source_language} -> {target_language}: {source}",
           {"prompt": "{target}?", "response": "{source}"}]  # fmt: skip
    task = TaskConfig(**TRANSLATION, templates=own)
    first, second = task_templates(task)
    assert first.response == "{target}" and second.response == "{source}"


def run_config(task: dict) -> dict:
    return {"data": {"tasks": [task]}}


def test_bad_template_names_template_and_missing_field():
    task = {
        **TRANSLATION,
        "templates": ["Translate: {source}", "Say {sentence} in {target_language}"],
    }
    with pytest.raises(ConfigError) as error:
        load_config(run_config(task))
    message = str(error.value)
    assert "template 1" in message and "'sentence'" in message and "Say {sentence}" in message


def test_configured_fields_may_be_used():
    task = {**TRANSLATION, "fields": {"source": "en", "target": "xho", "domain": "topic"},
            "templates": ["A {domain} text: {source}"]}  # fmt: skip
    assert load_config(run_config(task)).data.tasks[0].templates == ["A {domain} text: {source}"]


def test_unbalanced_braces_are_rejected():
    task = {**TRANSLATION, "templates": ["Translate {source"]}
    with pytest.raises(ConfigError, match="template 0"):
        load_config(run_config(task))
