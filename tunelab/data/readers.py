"""Read data files into rows: (field dict, "file:line") pairs, chosen by file extension.

Every problem a user can cause (missing file, unknown extension, non-UTF-8 bytes, malformed
JSON, an empty file) becomes a one-line `DataError` naming the file and, where there is one,
the line, so a bad row in a 10,000-line file is found without a traceback.

  .jsonl  one JSON object per non-empty line
  .json   a list of JSON objects (the Alpaca layout)
  .csv    header row + rows, comma-separated, standard quoting
  .tsv    header row + rows, tab-separated, standard quoting (as pandas writes it)
  .txt    one example per non-empty line, as {"text": line}
  .parquet, or a datasets save_to_disk folder: see `tunelab.data.sources` (rows "file:row N")
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

Row = tuple[dict[str, Any], str]  # (fields, "file:line")
TEXT_KEY = "text"  # the field .txt lines are stored under


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a data file; raises `DataError` naming file:line on bad input."""
    path = Path(path)
    columnar = _columnar_rows(path)
    if columnar is not None:
        rows = columnar
        if not rows:
            raise DataError(f"{path}: empty data set (no rows)")
        return rows
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted([*READERS, ".parquet"]))
        raise DataError(f"{path}: unknown file extension {path.suffix!r}; expected one of {known}")
    rows = reader(str(path), _read_text(path))
    if not rows:
        raise DataError(f"{path}: empty file (no rows)")
    return rows


def _columnar_rows(path: Path) -> list[Row] | None:
    """Rows of a Parquet file or a datasets folder; None for the text formats."""
    from tunelab.data import sources

    if path.suffix.lower() == ".parquet":
        return sources.read_parquet(path)
    if path.is_dir():
        return sources.read_datasets_dir(path)
    return None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {data[exc.start]:#04x}); "
            "re-save the file as UTF-8"
        ) from None


def _require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl(name: str, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        rows.append((_require_object(value, where), where))
    return rows


def read_json(name: str, text: str) -> list[Row]:
    """A JSON list of objects; each row is named by the line its object starts on."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position == len(text):
        return []
    if text[position] != "[":
        line = text.count("\n", 0, position) + 1
        raise DataError(
            f"{name}:{line}: expected a JSON list of objects ([{{...}}, ...]); "
            "for one object per line use a .jsonl file"
        )
    position = _skip_space(text, position + 1)
    rows: list[Row] = []
    while position < len(text) and text[position] != "]":
        where = f"{name}:{text.count(chr(10), 0, position) + 1}"
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        rows.append((_require_object(value, where), where))
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
        elif position < len(text) and text[position] != "]":
            line = text.count("\n", 0, position) + 1
            raise DataError(f"{name}:{line}: not valid JSON (expected ',' or ']')")
    if position >= len(text):
        line = text.count("\n") + 1
        raise DataError(f"{name}:{line}: not valid JSON (the list is never closed with ']')")
    return rows


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _read_delimited(name: str, text: str, delimiter: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [column.strip() for column in header]
        rows = []
        start = reader.line_num + 1  # a quoted field may span lines: name the row's first
        for values in reader:
            where = f"{name}:{start}"
            start = reader.line_num + 1
            if not any(value.strip() for value in values):
                continue
            # Short rows lack their last fields (reported later as missing); extras are dropped.
            rows.append((dict(zip(header, values, strict=False)), where))
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: malformed row ({exc})") from None
    return rows


def read_csv(name: str, text: str) -> list[Row]:
    return _read_delimited(name, text, ",")


def read_tsv(name: str, text: str) -> list[Row]:
    return _read_delimited(name, text, "\t")


def read_txt(name: str, text: str) -> list[Row]:
    return [
        ({TEXT_KEY: line}, f"{name}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


READERS: dict[str, Callable[[str, str], list[Row]]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".tsv": read_tsv,
    ".txt": read_txt,
}
