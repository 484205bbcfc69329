"""Formats: turn one file row into an `Example` (rendered prompt + response text).

  text         prompt "", response = row[text_field]           (plain language modelling)
  pairs        prompt = row[prompt_field], response = row[response_field]
  instruction  Alpaca rows: instruction, optional input, output
  chat         row[messages_field] = [{role, content}, ...]; the last assistant turn is the
               response, everything before it is the prompt (rendered by the chat template)

The field names are configurable so that existing files are used as they are, e.g. the Aya
schema with `prompt_field=inputs response_field=targets`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.readers import Row
from tunelab.data.templates import apply_chat, render_prompt
from tunelab.data.types import Example
from tunelab.errors import DataError


def field(row: dict[str, Any], name: str, source: str, cfg: DataConfig) -> str:
    """row[name] as text; a missing or null field is an error naming the row."""
    value = row.get(name)
    if value is None:
        raise DataError(f"{source}: missing field {name!r} (format {cfg.format})")
    if isinstance(value, (dict, list)):
        raise DataError(f"{source}: field {name!r} should be text, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def text_example(row: dict[str, Any], source: str, tokenizer: Any, cfg: DataConfig) -> Example:
    return Example(prompt="", response=field(row, cfg.text_field, source, cfg), source=source)


def pairs_example(row: dict[str, Any], source: str, tokenizer: Any, cfg: DataConfig) -> Example:
    prompt = field(row, cfg.prompt_field, source, cfg)
    response = field(row, cfg.response_field, source, cfg)
    return Example(render_prompt(prompt, tokenizer, cfg), response, source=source)


def instruction_example(
    row: dict[str, Any], source: str, tokenizer: Any, cfg: DataConfig
) -> Example:
    instruction = field(row, "instruction", source, cfg)
    extra = row.get("input")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    response = field(row, "output", source, cfg)
    return Example(render_prompt(prompt, tokenizer, cfg), response, source=source)


def chat_example(row: dict[str, Any], source: str, tokenizer: Any, cfg: DataConfig) -> Example:
    messages = row.get(cfg.messages_field)
    if messages is None:
        raise DataError(f"{source}: missing field {cfg.messages_field!r} (format chat)")
    if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
        raise DataError(
            f"{source}: field {cfg.messages_field!r} should be a list of {{role, content}} objects"
        )
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{source}: no assistant message to learn from (format chat)")
    history = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    if cfg.system_prompt and not (history and history[0]["role"] == "system"):
        history.insert(0, {"role": "system", "content": cfg.system_prompt})
    try:
        prompt = apply_chat(history, tokenizer)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    return Example(prompt, messages[last]["content"], source=source)


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )


FORMATS: dict[str, Callable[[dict[str, Any], str, Any, DataConfig], Example]] = {
    "text": text_example,
    "pairs": pairs_example,
    "instruction": instruction_example,
    "chat": chat_example,
}


def rows_to_examples(rows: list[Row], tokenizer: Any, cfg: DataConfig) -> list[Example]:
    """Convert every row with `cfg.format`."""
    convert = FORMATS[cfg.format]
    return [convert(row, source, tokenizer, cfg) for row, source in rows]
