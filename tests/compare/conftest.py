"""Tiny comparisons for the compare tests: random:llama models, builtin data, a few steps."""

from __future__ import annotations

from typing import Any

import pytest


def tiny_base() -> dict[str, Any]:
    """A run config (without method) that trains and evaluates in about a second."""
    return {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:reverse",
            "builtin_size": 40,
            "max_length": 64,
            "max_eval_examples": 4,
        },
        "train": {"batch_size": 4, "log_every": 1, "num_threads": 1},  # 1: fast on a busy CPU
        "eval": {"metrics": ["loss", "perplexity", "exact_match"], "max_new_tokens": 4},
    }


@pytest.fixture
def comparison_dict():
    """`comparison_dict(output_dir, **fields)`: a valid tiny comparison config as a dict."""

    def make(output_dir, **fields: Any) -> dict[str, Any]:
        return {
            "base": tiny_base(),
            "budget_steps": 3,
            "inference_tokens": 4,
            "output_dir": str(output_dir),
            **fields,
        }

    return make
