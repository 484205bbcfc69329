"""Row filters: keep the rows of a source whose numeric field lies in a range.

Aligned corpora carry a quality score per pair (gov-za-sona-aligned: a LASER alignment score,
many rows below 0.8 misaligned); `data.filter` / `tasks[].filter` drops the low ones before
anything else sees them. A row without the field, or with a value that is not a number, is an
error naming file:row: a filter that silently kept or dropped such rows would hide bad data.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tunelab.data.readers import Row
from tunelab.errors import DataError
from tunelab.task_config import RowFilter

log = logging.getLogger(__name__)


def filter_rows(rows: list[Row], rule: RowFilter | None, label: str) -> list[Row]:
    """The rows of `label` (a file, a task) that pass `rule`; all of them when there is none."""
    if rule is None:
        return rows
    kept = [(row, where) for row, where in rows if _passes(_number(row, where, rule), rule)]
    if not kept:
        raise DataError(f"{label}: filter {rule.describe()} leaves none of {len(rows)} rows")
    log.info("%s: filter %s keeps %d of %d rows", label, rule.describe(), len(kept), len(rows))
    return kept


def _number(row: dict[str, Any], where: str, rule: RowFilter) -> float:
    value = row.get(rule.field)
    if value is None:
        raise DataError(f"{where}: missing field {rule.field!r} (filter {rule.describe()})")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        value = None
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise DataError(
            f"{where}: field {rule.field!r} is {row.get(rule.field)!r}, not a number "
            f"(filter {rule.describe()})"
        )
    return number


def _passes(number: float, rule: RowFilter) -> bool:
    return (rule.min is None or number >= rule.min) and (rule.max is None or number <= rule.max)
