"""Runs of every method on one tiny random base, trained once per test session and shared by
the serve tests (AdapterSet, HTTP API, web page)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab import train
from tunelab.methods import METHODS

RUNS = {  # run name -> (method, learning rate); two LoRA runs, then one run of every method
    "lora_a": ("lora", 3e-2),
    "lora_b": ("lora", 1e-2),
    **{name: (name, 1e-3 if name in ("full", "ulmfit") else 3e-2) for name in METHODS},
}
del RUNS["lora"]


def train_tiny_run(
    root: Path, name: str, method: str | dict, lr: float, *, arch: str = "llama", seed: int = 0
) -> Path:
    """A run of 3 steps on a tiny random model."""
    config = {
        "model": {"name": f"random:{arch}", "seed": seed},
        "data": {"train": "builtin:reverse", "builtin_size": 16, "max_length": 32},
        "method": {"name": method} if isinstance(method, str) else method,
        "train": {"max_steps": 3, "lr": lr, "batch_size": 4, "tokens_per_batch": 128,
                  "progress": False},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(root / name),
    }  # fmt: skip
    return train(config).run_dir


@pytest.fixture(scope="session")
def method_runs(tmp_path_factory) -> dict[str, Path]:
    """name -> run folder for RUNS, all under one folder (the `--runs` of a server)."""
    root = tmp_path_factory.mktemp("method-runs")
    return {name: train_tiny_run(root, name, method, lr) for name, (method, lr) in RUNS.items()}


@pytest.fixture(scope="session")
def make_run():
    """`make_run(root, name, method, lr, arch=, seed=)`: train a 3-step tiny run."""
    return train_tiny_run
