"""Prompt templates: turn a raw user prompt into the exact text the model sees before its answer.

Training and generation must render prompts identically, or the model is asked a question in
a form it never saw; so `render_prompt` is the one place this happens, used by the data
pipeline, the evaluator and the CLI alike.

  auto    the tokenizer's chat template if it has one, else plain
  chat    the tokenizer's chat template (an error if there is none)
  plain   "{prompt}\\n"
  alpaca  the Stanford Alpaca instruction template
  other   any string containing {prompt}, e.g. "Q: {prompt}\\nA:"
"""

from __future__ import annotations

from typing import Any

from tunelab.config import DataConfig
from tunelab.errors import DataError

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{prompt}\n\n### Response:\n"
)
PLAIN = "{prompt}\n"
NAMED_TEMPLATES = {"plain": PLAIN, "alpaca": ALPACA}
PLACEHOLDER = "{prompt}"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def apply_chat(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """Render a conversation with the tokenizer's chat template, ready for the assistant's turn."""
    if not has_chat_template(tokenizer):
        raise DataError("template chat: the tokenizer has no chat template; use template plain")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises its own errors, e.g. "system role not supported"
        raise DataError(f"chat template failed: {exc}") from None
    return text if isinstance(text, str) else text[0]


def render_prompt(text: str, tokenizer: Any, cfg: DataConfig) -> str:
    """The model input for the user prompt `text` under `cfg.template` (and `cfg.system_prompt`)."""
    template = cfg.template
    if template == "auto":
        template = "chat" if has_chat_template(tokenizer) else "plain"
    if template == "chat":
        messages = [{"role": "user", "content": text}]
        if cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        return apply_chat(messages, tokenizer)
    pattern = NAMED_TEMPLATES.get(template, template)
    if PLACEHOLDER not in pattern:
        raise DataError(
            f"template {template!r}: expected auto, chat, plain, alpaca or a string with {{prompt}}"
        )
    # str.replace, not str.format: prompts and templates may hold other braces (JSON, code).
    rendered = pattern.replace(PLACEHOLDER, text)
    if cfg.system_prompt:
        rendered = f"{cfg.system_prompt}\n\n{rendered}"
    return rendered


def check_template(tokenizer: Any, cfg: DataConfig) -> None:
    """Fail early, before reading thousands of rows, if the template cannot be rendered."""
    render_prompt("", tokenizer, cfg)
