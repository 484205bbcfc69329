"""Formats (text, pairs, instruction, chat) and prompt templates."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DataConfig
from tunelab.data import build_datasets, render_prompt
from tunelab.data.formats import rows_to_examples
from tunelab.data.templates import ALPACA
from tunelab.errors import DataError


def test_aya_fields_on_the_real_xhosa_dev_file(shared_data, tokenizer):
    path = shared_data / "xhosa/en-xho-aya-style/dev.jsonl"
    cfg = DataConfig(
        train=str(path), prompt_field="inputs", response_field="targets", eval_fraction=0.0
    )
    examples = build_datasets(cfg, tokenizer).train
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert len(examples) == 293
    assert examples[0].response == first["targets"]
    assert examples[0].prompt == render_prompt(first["inputs"], tokenizer, cfg)
    assert examples[0].prompt.startswith("<|im_start|>user\nTranslate the following English")
    assert examples[0].source == f"{path}:1"


def test_missing_field_names_row_field_and_format(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text('{"inputs": "a", "targets": "b"}\n\n{"inputs": "c"}\n', encoding="utf-8")
    cfg = DataConfig(train=str(path), prompt_field="inputs", response_field="targets")
    with pytest.raises(
        DataError, match=r"train\.jsonl:3: missing field 'targets' \(format pairs\)"
    ):
        build_datasets(cfg, tokenizer)


def test_alpaca_instruction_rows(shared_data, plain_tokenizer):
    cfg = DataConfig(format="instruction", template="alpaca")
    rows = [
        ({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "f:1"),
        ({"instruction": "Say hi.", "input": "", "output": "hi"}, "f:2"),
    ]
    with_input, without_input = rows_to_examples(rows, plain_tokenizer, cfg)
    assert with_input.prompt == ALPACA.replace("{prompt}", "Add.\n\n2 and 3")
    assert without_input.prompt == ALPACA.replace("{prompt}", "Say hi.")
    assert (with_input.response, without_input.response) == ("5", "hi")
    real = DataConfig(
        train=str(shared_data / "english/instructions/instruction-data.json"), format="instruction"
    )
    assert len(build_datasets(real, plain_tokenizer).train) == 990  # 1,100 minus a 10% eval split


def test_chat_rows_prompt_is_the_history_before_the_last_assistant_turn(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    cfg = DataConfig(format="chat", system_prompt="Be brief.")
    [example] = rows_to_examples([({"messages": messages}, "chat.jsonl:1")], tokenizer, cfg)
    history = [{"role": "system", "content": "Be brief."}, *messages[:3]]
    expected = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert example.prompt == expected
    assert example.prompt.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert example.response == "4"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "chat.jsonl:4: no assistant message"),
        ({"messages": "Hi"}, "chat.jsonl:4: field 'messages' should be a list"),
        ({"conversation": []}, "chat.jsonl:4: missing field 'messages' (format chat)"),
    ],
)
def test_bad_chat_rows(tokenizer, row, message):
    with pytest.raises(DataError) as info:
        rows_to_examples([(row, "chat.jsonl:4")], tokenizer, DataConfig(format="chat"))
    assert message in str(info.value)


def test_text_format(tokenizer):
    cfg = DataConfig(format="text", text_field="body")
    [example] = rows_to_examples([({"body": "Molo"}, "t.jsonl:1")], tokenizer, cfg)
    assert (example.prompt, example.response) == ("", "Molo")


def test_templates(tokenizer, plain_tokenizer):
    def render(template, tok=tokenizer, **fields):
        return render_prompt("Q?", tok, DataConfig(template=template, **fields))

    chat = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert render("auto") == render("chat") == chat
    assert render("auto", plain_tokenizer) == render("plain") == "Q?\n"
    assert render("alpaca").endswith("### Instruction:\nQ?\n\n### Response:\n")
    assert render('{"q": "{prompt}"} A:') == '{"q": "Q?"} A:'  # other braces are left alone
    assert render("chat", system_prompt="S").startswith("<|im_start|>system\nS<|im_end|>\n")
    assert render("plain", system_prompt="S") == "S\n\nQ?\n"
    with pytest.raises(DataError, match="no chat template"):
        render("chat", plain_tokenizer)
    with pytest.raises(DataError, match="expected auto, chat, plain, alpaca"):
        render("vicuna")
