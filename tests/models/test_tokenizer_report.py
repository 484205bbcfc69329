"""Tokenizer report figures on a hand-made WordPiece tokenizer and text, counted by hand;
byte detection on the byte-level tokenizer; the CLI's table, JSON and errors."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.types import Example
from tunelab.models.tiny import byte_tokenizer
from tunelab.models.tokenizer_report import text_figures, train_data_figures

VOCAB = ["[UNK]", "molo", "we", "##na", "u", "##lu", "##ngile", "hello", "you", "<0xC3>"]
TEXTS = ["molo wena", "molo ulungile xyz", "<0xC3> wena"]
# tokens: [molo][we ##na] | [molo][u ##lu ##ngile][UNK] | [<0xC3>][we ##na]  -> 3 + 5 + 3
ENGLISH = ["hello you", "hello", "you"]  # 2 + 1 + 1 tokens


def hand_made_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_figures_counted_by_hand():
    figures = text_figures(hand_made_tokenizer(), TEXTS, max_length=4, english=ENGLISH)
    assert figures["tokens"] == 11 and figures["words"] == 7
    assert figures["fertility"] == pytest.approx(11 / 7)
    assert figures["chars_per_token"] == pytest.approx((9 + 17 + 11) / 11)
    assert figures["byte_fallback_rate"] == pytest.approx(100 / 11)  # <0xC3>
    assert figures["unknown_rate"] == pytest.approx(100 / 11)  # xyz
    assert figures["over_max_length"] == pytest.approx(100 / 3)  # only the 5-token row
    assert figures["epoch_tokens"] == 3 + 4 + 3
    assert figures["english_tokens"] == 4 and figures["premium"] == pytest.approx(11 / 4)


def test_byte_level_pieces_of_a_character_count_as_bytes():
    figures = text_figures(byte_tokenizer(), ["né"], max_length=8)  # n, then é as two bytes
    assert figures["tokens"] == 3 and figures["byte_fallback_rate"] == pytest.approx(200 / 3)


def test_train_data_figures_measure_responses_and_whole_rows():
    examples = [Example("ab", "molo wena"), Example("", "molo ulungile xyz")]
    figures = train_data_figures(hand_made_tokenizer(), examples, max_length=5)
    assert figures["tokens"] == 3 + 5 and figures["fertility"] == pytest.approx(8 / 5)
    # rows: prompt "ab" -> [UNK] (1) + 3 + EOS = 5; 0 + 5 + EOS = 6 > 5
    assert figures["over_max_length"] == 50.0 and figures["epoch_tokens"] == 5 + 5


def test_cli_table_json_and_errors(tmp_path):
    data, english, out = tmp_path / "xh.txt", tmp_path / "en.txt", tmp_path / "report.json"
    data.write_text("molo wena\nenkosi\n")
    english.write_text("hello you\nthanks\n")
    args = ["tokenizer-report", "--data", str(data), "--parallel", str(english),
            "--model", "random:llama", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tokens/word" in result.output and "random:llama" in result.output
    figures = json.loads(out.read_text())["models"]["random:llama"]
    assert figures["tokens"] == len("molo wena") + len("enkosi")  # one token per byte
    assert figures["premium"] == pytest.approx(15 / 15)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a"}\n{"other": "b"}\n')
    result = CliRunner().invoke(app, ["tokenizer-report", "--data", str(rows), "--model", "x"])
    assert result.exit_code == 2 and f"{rows}:2: no text field 'text'" in result.output
    short = tmp_path / "short.txt"
    short.write_text("one\n")
    result = CliRunner().invoke(app, ["tokenizer-report", "--data", str(data), "--parallel",
                                      str(short), "--model", "random:llama"])  # fmt: skip
    assert result.exit_code == 2 and "1 rows" in result.output
