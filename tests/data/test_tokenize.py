"""Tokenisation: exact prompt/response boundary, label masks, truncation, dropping."""

from __future__ import annotations

import logging
import time

import pytest

from tunelab.config import DataConfig
from tunelab.data import Example, build_datasets, tokenize_examples
from tunelab.errors import DataError

IGNORE = -100
PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_masked_response_and_eos_labelled(tokenizer):
    [item] = tokenize_examples([Example(PROMPT, "hello", source="f:1")], tokenizer, DataConfig())
    prompt, response = ids(tokenizer, PROMPT), ids(tokenizer, "hello")
    assert item.input_ids == prompt + response + [tokenizer.eos_token_id]
    assert item.labels == [IGNORE] * len(prompt) + response + [tokenizer.eos_token_id]
    assert item.input_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2
    assert item.source == "f:1"


def test_train_on_prompt_and_text_format_never_label_position_zero(tokenizer):
    cfg = DataConfig(train_on_prompt=True)
    [with_prompt] = tokenize_examples([Example(PROMPT, "hello")], tokenizer, cfg)
    assert with_prompt.labels == [IGNORE, *with_prompt.input_ids[1:]]
    [text] = tokenize_examples([Example("", "Molo")], tokenizer, DataConfig())
    assert text.labels == [IGNORE, *text.input_ids[1:]]
    assert text.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_end_of_the_prompt_and_some_response(tokenizer):
    cfg = DataConfig(max_length=16)
    long_prompt = "x" * 40 + "<|im_start|>assistant\n"
    [item] = tokenize_examples([Example(long_prompt, "answer")], tokenizer, cfg)
    assert len(item) == 16
    response = ids(tokenizer, "answer") + [tokenizer.eos_token_id]
    assert item.input_ids[-len(response) :] == response  # the short response survives whole
    assert item.input_ids[: -len(response)] == ids(tokenizer, long_prompt)[-(16 - len(response)) :]
    [text] = tokenize_examples([Example("", "y" * 40)], tokenizer, cfg)
    assert text.input_ids == ids(tokenizer, "y" * 16)  # plain text is cut from the right


def test_too_long_without_truncation_names_the_row_and_length(tokenizer):
    cfg = DataConfig(max_length=8, truncate=False)
    with pytest.raises(
        DataError, match=r"train\.jsonl:7: 12 tokens, longer than data\.max_length=8"
    ):
        tokenize_examples([Example("", "x" * 11, source="train.jsonl:7")], tokenizer, cfg)


def test_examples_without_labels_are_dropped_and_counted(tokenizer, caplog):
    examples = [Example("", ""), Example(PROMPT, "ok"), Example("", "")]
    with caplog.at_level(logging.INFO, logger="tunelab.data.tokenize"):
        items = tokenize_examples(examples, tokenizer, DataConfig())
    assert len(items) == 1
    assert "dropped 2 of 3 examples" in caplog.text


def test_thousands_of_rows_tokenise_quickly(shared_data, tokenizer):
    cfg = DataConfig(
        train=str(shared_data / "xhosa/en-xho-aya-style/train.jsonl"),
        prompt_field="inputs",
        response_field="targets",
        eval_fraction=0.0,
    )
    examples = build_datasets(cfg, tokenizer).train
    start = time.perf_counter()
    items = tokenize_examples(examples, tokenizer, cfg)
    assert len(items) == len(examples) == 2288
    assert time.perf_counter() - start < 5.0  # ~0.5 s; generous for a loaded machine
