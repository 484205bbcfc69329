"""Chat messages -> the text a served run sees, rendered as the run rendered prompts in training.

A single user message goes through `render_prompt` exactly as `tunelab generate` sends a
prompt (the run's template and system prompt), so the server and the offline tools agree token
for token. Longer conversations use the tokenizer's chat template when the run's template is a
chat one; for text templates the earlier turns are prepended as plain lines and the last user
turn is rendered with the run's template. A system message in the request replaces the run's.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import DataConfig
from tunelab.data.templates import apply_chat, has_chat_template, render_prompt


def render_chat(messages: list[dict[str, str]], tokenizer: Any, data: DataConfig) -> str:
    """The model input for an OpenAI-style conversation under the run's data config."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if system:
        data = data.model_copy(update={"system_prompt": "\n".join(system)})
    if len(turns) == 1 and turns[0]["role"] == "user":
        return render_prompt(turns[0]["content"], tokenizer, data)
    template = data.template
    if template == "chat" or (template == "auto" and has_chat_template(tokenizer)):
        if data.system_prompt:
            turns = [{"role": "system", "content": data.system_prompt}, *turns]
        return apply_chat(turns, tokenizer)
    *history, last = turns
    earlier = "".join(f"{m['content']}\n" for m in history)
    if last["role"] != "user":  # continue after an assistant turn: no new template
        return render_prompt("", tokenizer, data) + earlier + last["content"]
    bare = data.model_copy(update={"system_prompt": None})
    rendered = render_prompt(last["content"], tokenizer, bare)
    prefix = f"{data.system_prompt}\n\n" if data.system_prompt else ""
    return prefix + earlier + rendered
