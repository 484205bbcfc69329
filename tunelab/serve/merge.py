"""Moved to `tunelab.export.merge` (merge and GGUF writing live together); kept as an alias."""

from tunelab.export.merge import check_output, merge_run

__all__ = ["check_output", "merge_run"]
