"""`--ollama DIR`: the Modelfile, parsed back, points at the exported file, carries the run's
system prompt and evaluation decoding, and its TEMPLATE renders the prompt exactly as the run
rendered it in training (chat template or a plain one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunelab.data.templates import render_prompt
from tunelab.errors import TunelabError
from tunelab.export import export_run
from tunelab.run import load_run, read_run_config

from .conftest import make_run


def parse_modelfile(text: str) -> dict:
    """{'FROM': str, 'TEMPLATE': str, 'SYSTEM': str, 'PARAMETER': [(name, value)]}, following
    Ollama's syntax: INSTRUCTION value, with triple-quoted values spanning lines."""
    parsed: dict = {"PARAMETER": []}
    pattern = re.compile(r'^(\w+) (?:"""(.*?)"""|(.*?))$', re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(text):
        instruction, value = match.group(1), match.group(2) or match.group(3)
        if instruction == "PARAMETER":
            name, _, rest = value.partition(" ")
            parsed["PARAMETER"].append((name, rest))
        else:
            parsed[instruction] = value
    return parsed


def render(template: str, system: str, prompt: str) -> str:
    return template.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


@pytest.mark.parametrize("template", ["auto", "alpaca"])
def test_modelfile_matches_the_run(template, tmp_path):
    data = {"system_prompt": "Translate into isiXhosa.", "template": template}
    run = make_run(tmp_path, "lora", "llama", steps=1, data=data)
    folder = tmp_path / "ollama"
    exported = export_run(run, folder / "model.gguf", ollama_dir=folder, dtype="q8_0")
    parsed = parse_modelfile(exported.modelfile.read_text())
    assert (folder / parsed["FROM"]).resolve() == exported.path.resolve()
    assert parsed["SYSTEM"] == data["system_prompt"]
    cfg = read_run_config(run)
    _, tokenizer = load_run(run)
    assert render(parsed["TEMPLATE"], parsed["SYSTEM"], "Good morning") == render_prompt(
        "Good morning", tokenizer, cfg.data
    )
    parameters = dict(parsed["PARAMETER"])
    assert parameters["temperature"] == "0"
    assert parameters["num_predict"] == str(cfg.eval.max_new_tokens)
    assert parameters["stop"] == f'"{tokenizer.eos_token}"'


def test_modelfile_elsewhere_uses_an_absolute_path_and_repetition_penalty(tmp_path):
    run = make_run(tmp_path, "lora", "qwen2", steps=1)
    config = run / "config.yaml"  # the run's evaluation decoding, as a user would have set it
    text = config.read_text().replace("repetition_penalty: 1.0", "repetition_penalty: 1.3")
    config.write_text(text)
    exported = export_run(run, tmp_path / "out" / "m.gguf", ollama_dir=tmp_path / "ollama")
    parsed = parse_modelfile(exported.modelfile.read_text())
    assert Path(parsed["FROM"]) == exported.path.resolve()
    assert "SYSTEM" not in parsed
    assert ("repeat_penalty", "1.3") in parsed["PARAMETER"]
    with pytest.raises(TunelabError, match="Modelfile exists; pass --overwrite"):
        export_run(run, tmp_path / "out" / "other.gguf", ollama_dir=tmp_path / "ollama")
    assert not (tmp_path / "out" / "other.gguf").exists()
