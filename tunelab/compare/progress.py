"""One progress view across a whole comparison: an overall bar (runs done, elapsed, ETA for
everything left) above a bar for the variant now training (its steps, loss, its own ETA).

It is fed by the worker processes' events (see `tunelab.compare.worker`). The overall ETA
assumes the methods left cost about what the ones so far did, evaluation included, which
is why it counts whole methods (plus the running method's fraction) rather than steps.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class CompareProgress:
    """Context manager; `enabled=False` draws nothing (tests, `--quiet`)."""

    def __init__(self, total: int, *, console: Console | None = None, enabled: bool = True,
                 unit: str = "methods"):  # fmt: skip
        self.total, self.enabled, self.unit = max(total, 1), enabled, unit
        self.console = console or Console(stderr=True)
        self.finished, self.fraction, self.started = 0, 0.0, time.monotonic()
        self.method_started = self.started
        self.progress: Progress | None = None
        self.overall = self.current = None  # the two bars' task ids, once drawn

    def __enter__(self) -> CompareProgress:
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(),
                TextColumn("{task.fields[info]:<26}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
            )
            self.progress.start()
            self.overall = self.progress.add_task("comparison", total=self.total, info="", eta="")
            self.current = self.progress.add_task("", total=1.0, info="", eta="")
            self._refresh()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.current, visible=False)
            self.progress.stop()

    def begin(self, name: str) -> None:
        """A job starts (a method, or the base model's measurements)."""
        self.fraction, self.method_started = 0.0, time.monotonic()
        self._show(self.current, description=name, completed=0.0, info="loading", eta="")

    def handle(self, event: tuple) -> None:
        """Apply one worker event (start / update / message / finish)."""
        kind, name, *rest = event
        if kind == "start":
            total, completed = rest
            self._show(self.current, info=f"step {completed}/{total}")
        elif kind == "update":
            step, fraction, loss = rest
            self.fraction = fraction
            loss_text = f" · loss {loss:.3f}" if loss is not None else ""
            eta = self._eta(time.monotonic() - self.method_started, fraction)
            info = f"step {step}{loss_text}"
            self._show(self.current, completed=fraction, info=info, eta=_clock(eta))
        elif kind == "message":
            self.note(rest[0])
        elif kind == "finish":
            self._show(self.current, completed=1.0, info="evaluating", eta="")
        self._refresh()

    def end(self, name: str, status: str, error: str | None = None, *, counts: bool = True):
        """A job is over; `counts`: it is one of the methods the overall bar counts."""
        self.finished += counts
        self.fraction = 0.0
        self.note(f"{name}: {status}" + (f" ({error})" if error else ""))
        self._refresh()

    def note(self, text: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress else self.console).print(text, markup=False)

    def _refresh(self) -> None:
        done = min(self.finished + self.fraction, self.total)
        eta = self._eta(time.monotonic() - self.started, done / self.total)
        info = f"{self.finished}/{self.total} {self.unit}"
        self._show(self.overall, completed=done, info=info, eta=_clock(eta))

    @staticmethod
    def _eta(elapsed: float, fraction: float) -> float | None:
        return elapsed * (1 - fraction) / fraction if fraction > 0 else None

    def _show(self, task, **fields: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, **fields)
