"""Progress across trials: finished / target, best so far, elapsed and ETA — a rich bar on stderr
(each trial's own training runs with a silent reporter so the bars do not fight)."""

from __future__ import annotations

from typing import Protocol

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tunelab.search.study import FINISHED, count_trials


class SearchReporter(Protocol):
    def start(self, study: optuna.Study, target: int) -> None: ...
    def update(self, study: optuna.Study) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class SilentSearchReporter:
    def start(self, study: optuna.Study, target: int) -> None:
        pass

    def update(self, study: optuna.Study) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


def objective_names(study: optuna.Study) -> list[str]:
    """Objective metric names as the study recorded them ("chrf++:maximize" -> "chrf++")."""
    return [o.split(":")[0] for o in study.user_attrs.get("objectives", [])] or ["value"]


def best_text(study: optuna.Study) -> str:
    """One line: the best value so far, or the size of the Pareto front."""
    try:
        if len(study.directions) > 1:
            return f"Pareto front: {len(study.best_trials)} trials"
        best = study.best_trial
    except ValueError:
        return "no completed trial yet"
    return f"best {objective_names(study)[0]} {best.value:.4g} (trial {best.number})"


class RichSearchReporter:
    """A rich progress bar on stderr counting finished (complete or pruned) trials."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def start(self, study: optuna.Study, target: int) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]search {study.study_name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        done = count_trials(study, FINISHED)
        self.task = self.progress.add_task("trials", total=target, completed=done, best="")
        self.update(study)

    def update(self, study: optuna.Study) -> None:
        if self.progress is not None:
            done = count_trials(study, FINISHED)
            self.progress.update(self.task, completed=done, best=best_text(study))

    def message(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def result_table(result) -> Table:
    """The best trial(s) of a finished search: number, objective values, sampled config."""
    table = Table(title=f"search {result.study_name} · {result.finished} finished trials")
    table.add_column("trial", justify="right")
    for name in result.objective_names:
        table.add_column(name, justify="right")
    table.add_column("config")
    for best in result.best:
        values = [f"{v:.4g}" for v in best.values]
        config = " ".join(f"{k}={_short(v)}" for k, v in best.config.items())
        table.add_row(str(best.number), *values, config)
    return table


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
