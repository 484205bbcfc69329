"""`tunelab merge`: fold a run's weight update into the base and write a plain transformers
model directory (loads with `AutoModelForCausalLM.from_pretrained`, no tunelab needed)."""

from __future__ import annotations

from pathlib import Path

from tunelab.io import atomic_dir
from tunelab.methods import get_method
from tunelab.run import load_run, read_run_config


def merge_run(run_dir: str | Path, output: str | Path) -> Path:
    cfg = read_run_config(run_dir)
    method = get_method(cfg.method.name)
    model, tokenizer = load_run(run_dir)
    merged = method.merge(model, cfg.method)  # raises MergeNotSupported with the reason
    with atomic_dir(output) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(output)
