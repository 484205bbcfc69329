"""The forgetting probes: built in (offline, nothing configured) or from files; the instruction
sample is rendered with the run's template and scored on the responses only."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.types import IGNORE
from tunelab.errors import DataError
from tunelab.evaluate.forgetting import (
    INSTRUCTIONS,
    forgetting_batches,
    forgetting_perplexities,
    forgetting_summary,
)
from tunelab.models.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def labelled_text(tokenizer, batches) -> list[str]:
    texts = []
    for batch in batches:
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            texts.append(tokenizer.decode(ids[labels != IGNORE]))
    return texts


def test_builtin_probes_need_nothing(tokenizer):
    batches = forgetting_batches(tokenizer, DataConfig(template="plain"), EvalConfig())
    assert set(batches) == {"english_perplexity", "instruction_perplexity"}
    answers = labelled_text(tokenizer, batches["instruction_perplexity"])
    # loss on the responses (and the EOS that ends each), never on the requests
    assert sorted(a.removesuffix(tokenizer.eos_token) for a in answers) == sorted(
        r for _, r in INSTRUCTIONS
    )
    assert forgetting_batches(tokenizer, DataConfig(), EvalConfig(forgetting=False)) == {}


def test_probe_files(tmp_path, tokenizer):
    text = tmp_path / "probe.txt"
    text.write_text("A short paragraph of plain English for the probe.", encoding="utf-8")
    rows = tmp_path / "instructions.jsonl"
    rows.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!"}) + "\n")
    cfg = EvalConfig(forgetting_text=str(text), forgetting_instructions=str(rows))
    batches = forgetting_batches(tokenizer, DataConfig(template="plain"), cfg)
    assert labelled_text(tokenizer, batches["instruction_perplexity"]) == [
        "Hi!" + tokenizer.eos_token
    ]
    english = batches["english_perplexity"][0]["input_ids"][0]
    assert tokenizer.decode(english).startswith("A short paragraph")
    with pytest.raises(DataError, match="probe.txt: the forgetting probe text is empty"):
        text.write_text("  \n")
        forgetting_batches(tokenizer, DataConfig(), cfg)


def test_perplexities_and_summary(tokenizer):
    from tunelab.models.tiny import random_model

    model, tokenizer = random_model("llama")
    batches = forgetting_batches(tokenizer, DataConfig(template="plain"), EvalConfig())
    values = forgetting_perplexities(model, batches)
    assert all(1.0 < value < 1e4 for value in values.values())
    summary = forgetting_summary(values, {name: 2 * v for name, v in values.items()})
    for name, value in values.items():
        assert summary[name]["change"] == pytest.approx(value)
        assert summary[name]["relative_change"] == pytest.approx(1.0)
    assert forgetting_summary({}, values)["english_perplexity"]["change"] is None
