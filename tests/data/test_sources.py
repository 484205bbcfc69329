"""Parquet files and `datasets` save_to_disk folders read as rows named "file:row N", with the
same one-line errors as the text readers."""

from __future__ import annotations

import sys

import pyarrow as pa  # a dev dependency (tunelab[parquet] for users)
import pyarrow.parquet as pq
import pytest

from tunelab.config import DataConfig
from tunelab.data.build import build_datasets
from tunelab.data.readers import read_rows
from tunelab.errors import DataError


def write_parquet(path, rows: dict[str, list]):
    pq.write_table(pa.table(rows), path)
    return path


def test_parquet_rows_and_row_names(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", {"inputs": ["a", "b"], "targets": ["x", "y"]})
    rows = read_rows(path)
    assert rows == [({"inputs": "a", "targets": "x"}, f"{path}:row 1"),
                    ({"inputs": "b", "targets": "y"}, f"{path}:row 2")]  # fmt: skip


def test_parquet_bad_row_is_named(tmp_path, plain_tokenizer):
    path = write_parquet(
        tmp_path / "t.parquet", {"inputs": ["a", "b", "c"], "targets": ["x", None, "z"]}
    )
    cfg = DataConfig(
        train=str(path), prompt_field="inputs", response_field="targets", template="plain"
    )
    with pytest.raises(DataError, match=r"t\.parquet:row 2: missing field 'targets'"):
        build_datasets(cfg, plain_tokenizer)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not parquet at all", "not a readable Parquet file"), (None, "no such file")],
)
def test_parquet_bad_files(tmp_path, content, expected):
    path = tmp_path / "bad.parquet"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as error:
        read_rows(path)
    assert "\n" not in str(error.value)


def test_empty_parquet(tmp_path):
    path = write_parquet(tmp_path / "empty.parquet", {"text": pa.array([], pa.string())})
    with pytest.raises(DataError, match="empty data set"):
        read_rows(path)


@pytest.fixture(scope="module")
def datasets_dirs(tmp_path_factory):
    datasets = pytest.importorskip("datasets", reason="an optional extra, installed by .[dev]")
    root = tmp_path_factory.mktemp("hf")
    table = {"prompt": ["p1", "p2", "p3"], "response": ["r1", None, "r3"]}
    datasets.Dataset.from_dict(table).save_to_disk(str(root / "one"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(table), "test": datasets.Dataset.from_dict(table)}
    ).save_to_disk(str(root / "splits"))
    return root


def test_datasets_folder_rows(datasets_dirs):
    rows = read_rows(datasets_dirs / "one")
    assert rows[0] == ({"prompt": "p1", "response": "r1"}, f"{datasets_dirs / 'one'}:row 1")
    assert len(read_rows(datasets_dirs / "splits" / "train")) == 3


def test_datasets_bad_row_is_named(datasets_dirs, plain_tokenizer):
    cfg = DataConfig(train=str(datasets_dirs / "one"), template="plain")
    with pytest.raises(DataError, match=r"one:row 2: missing field 'response'"):
        build_datasets(cfg, plain_tokenizer)


def test_datasets_dict_must_name_a_split(datasets_dirs):
    with pytest.raises(DataError, match=r"several splits \(test, train\)"):
        read_rows(datasets_dirs / "splits")


def test_plain_directory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_rows(tmp_path)


def test_missing_optional_packages_are_one_line_errors(tmp_path, monkeypatch, datasets_dirs):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"needs datasets: pip install 'tunelab\[datasets\]'"):
        read_rows(datasets_dirs / "one")
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'tunelab\[parquet\]'"):
        read_rows(tmp_path / "x.parquet")
