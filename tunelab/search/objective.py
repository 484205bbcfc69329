"""One trial: sample a point, train it in OUTPUT/trials/trial-NNNN, return the objective values.

Pruning reads the eval loss the loop computes every `train.eval_every` steps (its `on_eval`
hook) and reports it to Optuna as the trial's intermediate value, negated when the objective is
maximised, so the pruner's "better" agrees with the objective's (lower loss ~ higher chrF++).
Optuna cannot prune multi-objective studies, so those trials always run to the end.

Each trial records in its user attributes: `worker` (host and pid, to tell a trial whose process
died from one still running elsewhere), `config` (the sampled {key: value}), `run_dir`,
`metrics` (the run's after-training metrics and summary fields) and, on failure, `error`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tunelab.errors import TunelabError
from tunelab.run_config import RunConfig
from tunelab.search.apply import settings_of, suggest, trial_config
from tunelab.search.space import SUMMARY_FIELDS, Objective


def owner() -> dict[str, Any]:
    """Who runs a trial: enough to tell later whether that process is still alive."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def trial_dir(output_dir: str | Path, number: int) -> Path:
    return Path(output_dir) / "trials" / f"trial-{number:04d}"


def trial_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What an objective may name: the after-training metrics plus numeric summary fields."""
    metrics = dict(summary.get("after") or {})
    metrics.update({k: summary[k] for k in SUMMARY_FIELDS if k in summary})
    return metrics


def objective_values(objectives: list[Objective], metrics: dict[str, float]) -> list[float]:
    missing = [o.metric for o in objectives if metrics.get(o.metric) is None]
    if missing:
        raise TunelabError(f"search.objective: the trial did not measure {missing[0]}")
    return [float(metrics[o.metric]) for o in objectives]


def pruning_hook(trial: optuna.Trial, direction: str):
    """`on_eval(step, eval_loss)` for the training loop: report, and stop the trial if told to."""
    sign = -1.0 if direction == "maximize" else 1.0

    def on_eval(step: int, eval_loss: float) -> None:
        trial.report(sign * eval_loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (eval loss {eval_loss:.4f})")

    return on_eval


@dataclass
class TrialRunner:
    """The Optuna objective: `study.optimize(TrialRunner(cfg, prune=True))`."""

    cfg: RunConfig
    prune: bool

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from tunelab.training.loop import train
        from tunelab.training.progress import SilentReporter

        objectives = settings_of(self.cfg).objective
        trial.set_user_attr("worker", owner())
        values = suggest(trial, self.cfg)
        run_dir = trial_dir(self.cfg.output_dir, trial.number)
        trial.set_user_attr("config", values)
        trial.set_user_attr("run_dir", str(run_dir))
        hook = pruning_hook(trial, objectives[0].direction) if self.prune else None
        try:
            result = train(
                trial_config(self.cfg, values, str(run_dir)),
                reporter=SilentReporter(),
                on_eval=hook,
            )
            metrics = trial_metrics(result.summary)
            scores = objective_values(objectives, metrics)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        trial.set_user_attr("metrics", metrics)
        return scores[0] if len(scores) == 1 else scores
