"""Tiny search configs: a random llama, 4 optimizer steps, eval loss every 2 steps."""

from __future__ import annotations

import pytest


def tiny_config(output_dir, **search) -> dict:
    """A run config that trains in about a second, with a small `search:` section."""
    section = {
        "objective": {"metric": "loss", "direction": "minimize"},
        "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "startup_trials": 2,
        "pruner": {"name": "none"},
        **search,
    }
    return {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:reverse",
            "eval": "builtin:reverse",
            "builtin_size": 32,
            "max_eval_examples": 4,
            "max_length": 64,
        },
        "method": {"name": "lora", "r": 2},
        "train": {"max_steps": 4, "eval_every": 2, "progress": False, "batch_size": 4},
        "eval": {"metrics": ["loss"], "before": False},
        "output_dir": str(output_dir),
        "search": section,
    }


@pytest.fixture
def make_config(tmp_path):
    def make(name: str = "search", **search) -> dict:
        return tiny_config(tmp_path / name, **search)

    return make
