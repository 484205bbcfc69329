"""Several trained adapters on one loaded base model, switched without reloading the base."""

from __future__ import annotations

from tunelab.data.templates import render_prompt
from tunelab.evaluate import generate
from tunelab.run import load_run, read_run_config


class AdapterSet:
    """Named runs served from one process. `use(name)` selects which one answers."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple] = {}
        self.active: str | None = None

    @classmethod
    def from_runs(cls, runs: dict[str, str]) -> AdapterSet:
        served = cls()
        for name, path in runs.items():
            served.add(name, path)
        return served

    def add(self, name: str, run_dir: str) -> None:
        cfg = read_run_config(run_dir)
        model, tokenizer = load_run(run_dir)
        self.runs[name] = (model, tokenizer, cfg)
        self.active = self.active or name

    def use(self, name: str) -> None:
        if name not in self.runs:
            raise KeyError(name)
        self.active = name

    def generate(self, prompts: list[str], max_new_tokens: int, *, raw: bool = False) -> list[str]:
        model, tokenizer, cfg = self.runs[self.active]
        rendered = prompts if raw else [render_prompt(p, tokenizer, cfg.data) for p in prompts]
        return generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=8)
