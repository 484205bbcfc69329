"""Shared pieces of the bad-input corpus: a valid tiny config, finished runs to damage, and a
snapshot of a folder tree (every path and the bytes of every file) to prove nothing changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from tunelab import train


def base_config(root: Path, **changes) -> dict:
    """A valid config of a 1-step LoRA run on random:llama; `changes` merge per section."""
    config = {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:add", "eval": "builtin:add", "builtin_size": 16,
                 "max_eval_examples": 4, "max_length": 48},
        "method": {"name": "lora"},
        "train": {"max_steps": 1, "batch_size": 4, "progress": False, "num_threads": 1},
        "eval": {"metrics": ["loss"], "before": False, "max_new_tokens": 2},
        "output_dir": str(root / "out"),
    }  # fmt: skip
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def write_yaml(path: Path, config) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes (files) or "dir"; what "nothing changed" means."""
    tree = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        tree[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def make_finished_runs(root: Path) -> dict[str, Path]:
    """Finished runs to copy and damage: LoRA and prompt tuning on random:llama, LoRA on
    random:qwen2 (another base)."""
    runs = {}
    for name, model, method in [("lora", "llama", "lora"), ("prompt", "llama", "prompt"),
                                ("qwen", "qwen2", "lora")]:  # fmt: skip
        config = base_config(root, model={"name": f"random:{model}"}, method={"name": method})
        config["output_dir"] = str(root / name)
        runs[name] = train(config).run_dir
    return runs


def copy_run(runs: dict[str, Path], name: str, target: Path) -> Path:
    shutil.copytree(runs[name], target)
    return target
