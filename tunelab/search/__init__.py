"""Hyperparameter search with Optuna: `run_search(config)` / `tunelab search CONFIG`.

    space.py     the `search:` config section (schema only; `tunelab.config` imports it)
    apply.py     check keys against the run config; sample a point; write it into a config
    objective.py one trial: train in OUTPUT/trials/trial-NNNN, prune on eval loss, score
    study.py     storage (SQLite by default), sampler, pruner, dead trials, one worker's loop
    runner.py    run_search: resume the study, run K workers, write the outputs
    outputs.py   best.yaml, trials.csv, report.html
    progress.py  a rich bar across trials (best so far, ETA)

Importing this package is light: Optuna and torch load only when `run_search` is first used,
so config validation (which imports `space`) pays nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.search.space import SearchSettings

if TYPE_CHECKING:
    from tunelab.search.runner import run_search


def __getattr__(name: str):
    if name == "run_search":
        from tunelab.search.runner import run_search

        return run_search
    raise AttributeError(f"module 'tunelab.search' has no attribute {name!r}")


__all__ = ["SearchSettings", "run_search"]
