"""Evaluation: pure metric functions, batched generation, and evaluate(model, data) -> dict.

Importing this package stays light: torch and transformers load only when `evaluate` or
`generate` is first used, so config validation (which reads `METRICS`) pays nothing for them.
The evaluation module is `evaluation.py`, not `evaluate.py`: a submodule named like the
function would replace `tunelab.evaluate.evaluate` with the module as soon as it is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.evaluate.metrics import METRICS, Metric, perplexity_from_loss

if TYPE_CHECKING:
    from tunelab.evaluate.evaluation import evaluate, evaluate_with_predictions
    from tunelab.evaluate.generation import generate

_LAZY = {
    "evaluate": "tunelab.evaluate.evaluation",
    "evaluate_with_predictions": "tunelab.evaluate.evaluation",
    "generate": "tunelab.evaluate.generation",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunelab.evaluate' has no attribute {name!r}")


__all__ = [
    "METRICS",
    "Metric",
    "evaluate",
    "evaluate_with_predictions",
    "generate",
    "perplexity_from_loss",
]
