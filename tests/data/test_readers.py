"""Readers: every extension, and every bad input as a one-line error naming file:line."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DataConfig
from tunelab.data import build_datasets
from tunelab.data.readers import read_rows
from tunelab.errors import DataError


def test_jsonl_skips_blank_lines_and_numbers_rows_by_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n{"a": "two"}\n', encoding="utf-8")
    rows = read_rows(path)
    assert [row for row, _ in rows] == [{"a": 1}, {"a": "two"}]
    assert [source for _, source in rows] == [f"{path}:1", f"{path}:3"]


def test_json_list_names_the_line_each_object_starts_on(tmp_path):
    path = tmp_path / "data.json"
    records = [{"instruction": "x", "output": "y"}, {"instruction": "z", "output": "w"}]
    path.write_text(json.dumps(records, indent=4), encoding="utf-8")
    rows = read_rows(path)
    assert [row for row, _ in rows] == records
    assert [source.rsplit(":", 1)[1] for _, source in rows] == ["2", "6"]


def test_csv_handles_quotes_and_multiline_fields(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,category\n"a, b",x\n"two\nlines",y\nplain,z\n', encoding="utf-8")
    rows = read_rows(path)
    assert [row["text"] for row, _ in rows] == ["a, b", "two\nlines", "plain"]
    assert [source.rsplit(":", 1)[1] for _, source in rows] == ["2", "3", "5"]


def test_tsv_with_pandas_style_quoting(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text('index_id\tcategory\ttext\n7\tsport\t"""Hi,"" she said."\n', encoding="utf-8")
    [(row, source)] = read_rows(path)
    assert row == {"index_id": "7", "category": "sport", "text": '"Hi," she said.'}
    assert source.endswith("data.tsv:2")


def test_txt_is_one_example_per_non_empty_line(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    rows = read_rows(path)
    assert [row["text"] for row, _ in rows] == ["first line", "second line"]
    # A .txt file is language-modelling text whatever data.format says.
    data = build_datasets(DataConfig(train=str(path), eval_fraction=0.0), tokenizer)
    assert [(e.prompt, e.response) for e in data.train] == [("", "first line"), ("", "second line")]


def test_real_tsv_and_csv_files(shared_data):
    sib = read_rows(shared_data / "xhosa/sib200/xho_Latn/dev.tsv")
    assert len(sib) == 99 and set(sib[0][0]) == {"index_id", "category", "text"}
    banking = read_rows(shared_data / "english/banking77/test.csv")
    assert len(banking) == 3080 and set(banking[0][0]) == {"text", "category"}


def error_for(path) -> str:
    with pytest.raises(DataError) as info:
        read_rows(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("train.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3,}\n', "train.jsonl:3: not valid JSON"),
        ("train.jsonl", '{"a": 1}\n[1, 2]\n', "train.jsonl:2: expected a JSON object"),
        ("data.json", '[\n  {"a": 1},\n  {"a": 2\n]\n', "data.json:4: not valid JSON"),
        ("data.json", '{"a": 1}', "data.json:1: expected a JSON list"),
        ("data.json", '[{"a": 1},\n{"a": 2}', "data.json:2: not valid JSON"),
        ("train.jsonl", "", "train.jsonl: empty file"),
        ("train.jsonl", "\n  \n", "train.jsonl: empty file"),
        ("data.csv", "text,category\n", "data.csv: empty file"),
        ("data.txt", "\n\n", "data.txt: empty file"),
        ("data.xlsx", "x", "unknown file extension '.xlsx'"),
        ("data.parquet", "x", "data.parquet: not a readable Parquet file"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert expected in error_for(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    assert f"{path}:2: not valid UTF-8" in error_for(path)


def test_missing_file(tmp_path):
    assert "no such file" in error_for(tmp_path / "absent.jsonl")
