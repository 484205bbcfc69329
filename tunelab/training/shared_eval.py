"""The base model's scores, shared between runs that evaluate the same rows the same way.

Every variant of a comparison evaluates the untouched base model before it trains, on each of
its tasks. A task's "before" scores depend only on the base model, the eval settings and the
task's own rows, not on what else the run trains on or whether it trains on that task at all;
so the first run to score a task stores the scores and the generations here, and every later
run whose key matches reads them back instead of evaluating again. The key is a digest of
everything the scores depend on: the model and eval config, the task's metrics, its examples
and its tokenised loss batches (for the forgetting probes: the model config and the probes'
batches). A run whose rows or settings differ in any way evaluates afresh.

    FOLDER/<key>.json   {"name": task or probe set, "scores": ..., "samples": [...]}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tunelab.data.types import Example
from tunelab.io import atomic_write_json


class SharedScores:
    """A folder of scores keyed by digest; entries are written atomically and never changed."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / f"{key}.json", entry)


def task_key(cfg, metrics: list[str], examples: list[Example], batches: list[dict]) -> str:
    """What one task's scores depend on, as a digest."""
    digest = _settings_digest(cfg)
    digest.update(json.dumps(metrics).encode())
    for example in examples:
        fields = [example.prompt, example.response, example.label, list(example.options)]
        digest.update(json.dumps(fields, ensure_ascii=False).encode())
    _update_with_batches(digest, batches)
    return digest.hexdigest()


def probes_key(cfg, probes: dict[str, list[dict]]) -> str:
    """What the forgetting probes' perplexities depend on, as a digest."""
    digest = _settings_digest(cfg)
    for name in sorted(probes):
        digest.update(name.encode())
        _update_with_batches(digest, probes[name])
    return "probes-" + digest.hexdigest()


def _settings_digest(cfg):
    settings = {
        "model": cfg.model.model_dump(mode="json"),
        "eval": cfg.eval.model_dump(mode="json"),
        "max_length": cfg.data.max_length,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode())


def _update_with_batches(digest, batches: list[dict]) -> None:
    for batch in batches:
        for name in sorted(batch):
            value = batch[name]
            if isinstance(value, torch.Tensor):
                digest.update(name.encode())
                digest.update(str(tuple(value.shape)).encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
