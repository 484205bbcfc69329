"""Columnar sources: Parquet files and Hugging Face `datasets` folders (`save_to_disk` output).

Most hub data sets (Aya among them) are distributed as Parquet; a `datasets` folder is what a
user who prepared data with that library has on disk. Both become the same rows as the text
readers: (field dict, "file:row N") pairs, so the formats report a bad row by file and row.
pyarrow and datasets are optional (`pip install 'tunelab[parquet]'` / `'tunelab[datasets]'`):
a missing one is a one-line error, not an ImportError traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import DataError

Row = tuple[dict[str, Any], str]


def read_parquet(path: Path) -> list[Row]:
    """Every row of a Parquet file as a dict (nested values kept as lists/dicts)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install 'tunelab[parquet]'"
        ) from None
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for bad files
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    return [(row, f"{path}:row {number}") for number, row in enumerate(table.to_pylist(), 1)]


def read_datasets_dir(path: Path) -> list[Row]:
    """Rows of a `Dataset.save_to_disk` folder; a `DatasetDict` folder must name its split."""
    if not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        raise DataError(
            f"{path}: is a directory, expected a data file or a datasets save_to_disk folder"
        )
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise DataError(
            f"{path}: reading a datasets folder needs datasets: pip install 'tunelab[datasets]'"
        ) from None
    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError / ArrowInvalid for bad folders
        raise DataError(f"{path}: not a readable datasets folder ({_first_line(exc)})") from None
    if not isinstance(loaded, Dataset):
        splits = ", ".join(sorted(loaded))
        raise DataError(f"{path}: holds several splits ({splits}); name one, e.g. {path}/train")
    return [(dict(row), f"{path}:row {number}") for number, row in enumerate(loaded, 1)]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
