"""How badly does a tokenizer cut my language? Figures per tokenizer on a text file.

- fertility — tokens per whitespace word (Rust et al. 2021, "How Good is Your Tokenizer?",
  arXiv:2012.15613): near 1-1.5 for a language the vocabulary was built for, 3+ when words are
  cut into pieces.
- chars_per_token — characters (spaces included) per token.
- premium — tokens of the text / tokens of its English translation on parallel lines (Petrov
  et al. 2023, "Language Model Tokenizers Introduce Unfairness Between Languages",
  arXiv:2305.15425): 2.0 means the same content costs twice the tokens, context and compute.
- byte_fallback_rate — percent of tokens that are bytes, not text pieces: SentencePiece's
  `<0xNN>` byte-fallback tokens, or byte-level BPE tokens that decode to an incomplete UTF-8
  character (a character the vocabulary has no piece for).
- unknown_rate — percent of tokens that are the unknown token.
- over_max_length — percent of examples with more than `max_length` tokens (cut in training).
- epoch_tokens — tokens one training epoch reads: each example's tokens, capped at max_length.

Counts use the tokenizer alone (no special tokens added); no model weights are loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.data.readers import TEXT_KEY, read_rows
from tunelab.errors import DataError

BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece byte fallback


def load_tokenizer(name: str):
    """The tokenizer of model `name` (as `model.name` takes it), without loading weights."""
    from transformers import AutoTokenizer

    from tunelab.models.load import resolve_model_dir
    from tunelab.models.tiny import byte_tokenizer

    if name.startswith("random:"):
        return byte_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_model_dir(name))


def read_texts(path: str | Path, field: str | None = None) -> list[str]:
    """The `field` of every row of a data file (.txt lines are the field "text"); a missing or
    non-text field is a DataError naming file:line."""
    rows = read_rows(path)
    field = field or TEXT_KEY
    texts = []
    for fields, where in rows:
        value = fields.get(field)
        if not isinstance(value, str):
            known = ", ".join(sorted(fields))
            raise DataError(f"{where}: no text field {field!r} (fields: {known}); pass --field")
        texts.append(value)
    return texts


def byte_token_ids(tokenizer, ids: set[int]) -> set[int]:
    """Those of `ids` that stand for raw bytes rather than text pieces."""
    found = set()
    for token_id in ids:
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and BYTE_PIECE.match(piece):
            found.add(token_id)
        elif "\ufffd" in tokenizer.decode([token_id]):
            found.add(token_id)
    return found


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, no special tokens; empty texts give no tokens."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def text_figures(
    tokenizer, texts: Sequence[str], *, max_length: int, english: Sequence[str] | None = None
) -> dict[str, Any]:
    """The module's figures for `texts` (and the premium against `english`, line-aligned)."""
    if not texts:
        raise ValueError("no texts to measure")
    encoded = encode(tokenizer, texts)
    lengths = [len(ids) for ids in encoded]
    tokens = sum(lengths)
    words = sum(len(text.split()) for text in texts)
    characters = sum(len(text) for text in texts)
    seen = {token for ids in encoded for token in ids}
    byte_ids = byte_token_ids(tokenizer, seen)
    unk = tokenizer.unk_token_id
    figures: dict[str, Any] = {
        "examples": len(texts),
        "words": words,
        "characters": characters,
        "tokens": tokens,
        "fertility": tokens / words if words else None,
        "chars_per_token": characters / tokens if tokens else None,
        "byte_fallback_rate": _percent(sum(t in byte_ids for ids in encoded for t in ids), tokens),
        "unknown_rate": _percent(sum(t == unk for ids in encoded for t in ids), tokens),
        "max_length": max_length,
        "over_max_length": _percent(sum(n > max_length for n in lengths), len(lengths)),
        "epoch_tokens": sum(min(n, max_length) for n in lengths),
    }
    if english is not None:
        if len(english) != len(texts):
            raise DataError(f"parallel text: {len(english)} English lines for {len(texts)} rows")
        english_tokens = sum(len(ids) for ids in encode(tokenizer, english))
        figures["english_tokens"] = english_tokens
        figures["premium"] = tokens / english_tokens if english_tokens else None
    return figures


def tokenizer_report(
    data: str | Path,
    *,
    models: Sequence[str],
    field: str | None = None,
    parallel: str | Path | None = None,
    parallel_field: str | None = None,
    max_length: int = 512,
) -> dict[str, Any]:
    """{"data", "field", "parallel", "models": {name: figures}} for each model's tokenizer.
    Every input is read (and checked) before any tokenizer loads."""
    texts = read_texts(data, field)
    english = read_texts(parallel, parallel_field or field) if parallel else None
    if english is not None and len(english) != len(texts):
        raise DataError(f"{parallel}: {len(english)} rows, but {data} has {len(texts)}")
    report = {"data": str(data), "field": field or TEXT_KEY, "parallel": str(parallel or "")}
    report["models"] = {
        name: text_figures(load_tokenizer(name), texts, max_length=max_length, english=english)
        for name in models
    }
    return report


def train_data_figures(tokenizer, examples: Sequence, max_length: int) -> dict[str, Any]:
    """summary.json's `tokenizer`: the figures on a run's train responses (the text it learns
    to write), with lengths and epoch tokens of whole rows (prompt + response + EOS)."""
    responses = [example.response for example in examples]
    if not responses:
        return {}
    figures = text_figures(tokenizer, responses, max_length=max_length)
    prompts = [len(ids) for ids in encode(tokenizer, [example.prompt for example in examples])]
    rows = [p + r + 1 for p, r in zip(prompts, map(len, encode(tokenizer, responses)), strict=True)]
    figures["over_max_length"] = _percent(sum(n > max_length for n in rows), len(rows))
    figures["epoch_tokens"] = sum(min(n, max_length) for n in rows)
    return figures


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0
