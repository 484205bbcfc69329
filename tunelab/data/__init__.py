"""Data pipeline: files or builtin tasks -> Examples -> Tokenized -> batches.

readers (jsonl/json/csv/tsv/txt; parquet and datasets folders in sources) -> formats
(text/pairs/instruction/chat) + templates -> tokenize (labels with -100 on prompts) -> batching
(packed rows or padded batches). Multi-task runs (`data.tasks`): multitask renders each task
through its template bank (template_bank) and mixes the tasks (mixture).
"""

from tunelab.data.batching import make_batches
from tunelab.data.build import build_datasets
from tunelab.data.builtin import BUILTIN_TASKS
from tunelab.data.templates import render_prompt
from tunelab.data.tokenize import tokenize_examples
from tunelab.data.types import Datasets, Example, Tokenized

__all__ = [
    "BUILTIN_TASKS",
    "Datasets",
    "Example",
    "Tokenized",
    "build_datasets",
    "make_batches",
    "render_prompt",
    "tokenize_examples",
]
