"""An Ollama Modelfile for an exported GGUF: `ollama create NAME -f DIR/Modelfile`.

FROM      the GGUF file (relative to the Modelfile when beside or below it)
TEMPLATE  the prompt exactly as the run rendered it in training and evaluation (its chat template
          or plain/alpaca/custom template, with its system prompt slot), with Ollama's
          `{{ .System }}` and `{{ .Prompt }}` where the run had the system and user text
SYSTEM    the run's system prompt, if it had one
PARAMETER the decoding the run was evaluated with: greedy (temperature 0), its length limit,
          repetition penalty, and the EOS token as a stop sequence
"""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.data.templates import render_prompt
from tunelab.run_config import RunConfig

USER, SYSTEM = "\x00TUNELAB_USER\x00", "\x00TUNELAB_SYSTEM\x00"


def modelfile_text(gguf_path: Path, folder: Path, cfg: RunConfig, tokenizer) -> str:
    """The Modelfile's text; `folder` is where it will be written."""
    lines = [f"FROM {_from_path(gguf_path, folder)}"]
    template = go_template(cfg, tokenizer)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    if cfg.data.system_prompt:
        lines.append(f'SYSTEM """{cfg.data.system_prompt}"""')
    lines += [f"PARAMETER {key} {value}" for key, value in parameters(cfg, tokenizer)]
    if cfg.eval.no_repeat_ngram_size:
        lines.append(
            f"# evaluation also used no_repeat_ngram_size={cfg.eval.no_repeat_ngram_size}, "
            "which Ollama has no parameter for"
        )
    return "\n".join(lines) + "\n"


def go_template(cfg: RunConfig, tokenizer) -> str | None:
    """The run's prompt rendering with Ollama placeholders, or None if the rendered text holds
    `{{` or triple quotes (it would not survive as a Go template inside a Modelfile)."""
    data = cfg.data.model_copy(update={"system_prompt": SYSTEM if cfg.data.system_prompt else None})
    rendered = render_prompt(USER, tokenizer, data)
    if "{{" in rendered or '"""' in rendered:
        return None
    return rendered.replace(SYSTEM, "{{ .System }}").replace(USER, "{{ .Prompt }}")


def parameters(cfg: RunConfig, tokenizer) -> list[tuple[str, str]]:
    """(name, value) PARAMETER lines matching the run's evaluation decoding."""
    pairs = [("temperature", "0"), ("num_predict", str(cfg.eval.max_new_tokens))]
    if cfg.eval.repetition_penalty != 1.0:
        # transformers penalises every earlier token; -1 makes llama.cpp look as far back
        pairs += [("repeat_penalty", str(cfg.eval.repetition_penalty)), ("repeat_last_n", "-1")]
    if tokenizer.eos_token:
        pairs.append(("stop", _quoted(tokenizer.eos_token)))
    return pairs


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _from_path(gguf_path: Path, folder: Path) -> str:
    relative = Path(os.path.relpath(gguf_path.resolve(), folder.resolve()))
    return f"./{relative}" if ".." not in relative.parts else str(gguf_path.resolve())
