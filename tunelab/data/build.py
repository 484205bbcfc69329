"""Build the train and eval example lists a run uses, from files or builtin tasks.

    cfg.train (+ cfg.eval, or a seeded eval_fraction split) -> rows -> Examples -> caps

Everything is deterministic given `cfg.seed`: the split, the caps and the builtin rows, so a
run and its resumption, or two runs being compared, see exactly the same data.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.builtin import builtin_pairs, is_builtin
from tunelab.data.filters import filter_rows
from tunelab.data.formats import rows_to_examples
from tunelab.data.readers import TEXT_KEY, read_rows
from tunelab.data.templates import check_template, render_prompt
from tunelab.data.types import Datasets, Example
from tunelab.errors import DataError

log = logging.getLogger(__name__)


def build_datasets(cfg: DataConfig, tokenizer: Any) -> Datasets:
    """Train and eval examples for `cfg`, prompts already rendered with the template.
    Multi-task configs: the mixture, and the eval rows of every trained task."""
    if cfg.tasks and cfg.eval is None:
        from tunelab.data.multitask import build_multitask  # it builds on this module

        return build_multitask(cfg, tokenizer).datasets()
    if cfg.format != "text" or is_builtin(cfg.train):
        check_template(tokenizer, cfg)
    train = load_examples(cfg.train, tokenizer, cfg, seed=cfg.seed)
    if cfg.eval is not None:
        exclude = frozenset(example.prompt for example in train)
        eval_examples = load_examples(cfg.eval, tokenizer, cfg, seed=cfg.seed + 1, exclude=exclude)
    else:
        train, eval_examples = split(train, cfg.eval_fraction, cfg.seed)
    train = cap(train, cfg.max_train_examples, cfg.seed)
    eval_examples = cap(eval_examples, cfg.max_eval_examples, cfg.seed + 1)
    log.info("data: %d train / %d eval examples", len(train), len(eval_examples))
    return Datasets(train=train, eval=eval_examples)


def load_examples(
    spec: str,
    tokenizer: Any,
    cfg: DataConfig,
    *,
    seed: int,
    exclude: frozenset[str] = frozenset(),
) -> list[Example]:
    """Examples from a file path or `builtin:NAME`.

    Builtin rows use `seed` (train: cfg.seed, eval: cfg.seed + 1) and skip any rendered prompt
    in `exclude`, so builtin train and eval never share a question.
    """
    if is_builtin(spec):
        return builtin_examples(spec, tokenizer, cfg, seed=seed, exclude=exclude)
    path = Path(spec).expanduser()
    rows = filter_rows(read_rows(path), cfg.filter, str(path))
    if path.suffix.lower() == ".txt":  # a .txt file is plain text whatever the format says
        cfg = cfg.model_copy(update={"format": "text", "text_field": TEXT_KEY})
    return rows_to_examples(rows, tokenizer, cfg)


def builtin_examples(
    spec: str, tokenizer: Any, cfg: DataConfig, *, seed: int, exclude: frozenset[str]
) -> list[Example]:
    # Prompts are compared after rendering, as train examples hold them rendered.
    examples = []
    for number, (prompt, response) in enumerate(builtin_pairs(spec, seed), start=1):
        rendered = render_prompt(prompt, tokenizer, cfg)
        if rendered not in exclude:
            examples.append(Example(rendered, response, source=f"{spec}:{number}"))
            if len(examples) == cfg.builtin_size:
                return examples
    raise DataError(
        f"{spec}: only {len(examples)} distinct rows (not in the train set); "
        f"lower data.builtin_size"
    )


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded `fraction` held out; at least one eval example when fraction > 0
    and there are two or more examples, never all of them. File order is kept in both."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    count = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held_out = set(random.Random(seed).sample(range(len(examples)), count))
    train = [example for i, example in enumerate(examples) if i not in held_out]
    eval_examples = [example for i, example in enumerate(examples) if i in held_out]
    return train, eval_examples


def cap(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded subset of at most `limit` examples, in their original order.

    A random subset rather than the first rows: files are often sorted (by label, by source),
    and a prefix would then be a biased sample."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
