"""Progress reporting for long work: a small protocol the loop calls, and a rich progress bar
showing loss, tokens/s and ETA. `compare` and `search` pass their own reporters."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter(Protocol):
    def start(self, description: str, total_steps: int, completed: int = 0) -> None: ...
    def update(self, step: int, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, description: str, total_steps: int, completed: int = 0) -> None:
        pass

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


def progress_columns() -> tuple:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class BarReporter:
    """A rich progress bar on stderr: step, loss, tokens/s, elapsed and remaining time."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def start(self, description: str, total_steps: int, completed: int = 0) -> None:
        self.progress = Progress(*progress_columns(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(
            description, total=total_steps, completed=completed, loss="-", speed="-"
        )

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self.progress is None:
            return
        fields = {}
        if "loss" in metrics:
            fields["loss"] = f"{metrics['loss']:.4f}"
        if "tokens_per_second" in metrics:
            fields["speed"] = f"{metrics['tokens_per_second']:.0f}"
        self.progress.update(self.task, completed=step, **fields)

    def message(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
