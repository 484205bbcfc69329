"""Where a run's wall time goes: seconds per phase, measured with `time.perf_counter` around
the calls `train` makes, so a user sees what a run spends outside the optimizer step (loading
and converting the model, building the data, the before/after evaluations, checkpoint writes).

`PhaseTimer.phase(name)` is a context manager that adds the time spent inside it to `name`;
`summary()` gives summary.json's `phases`: the wall time since the timer started and seconds
per phase, with `other` = wall time minus the measured phases (config writes, seeding, moving
the model, ...), so the phases always add up to the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = {  # name -> what it covers, in the order a run goes through them
    "model_load": "model + tokenizer load (GGUF -> transformers conversion on first use)",
    "data": "reading, templating and tokenising the data; batching plan",
    "eval_before": "evaluating the base model (loss, generation, tasks, forgetting probes)",
    "method_setup": "method.apply (calibration included), optimizer, accelerator",
    "train_steps": "optimizer steps (forward, backward, update, logging)",
    "eval_periodic": "eval loss every train.eval_every steps",
    "checkpoints": "checkpoint writes during training and the adapter save",
    "eval_after": "evaluating the trained model (loss, generation, tasks, forgetting probes)",
    "report": "summary figures: bootstrap intervals, paired test, tokenizer report",
}
LABELS = {"model_load": "load", "data": "data", "eval_before": "eval before",
          "method_setup": "setup", "train_steps": "steps", "eval_periodic": "eval during",
          "checkpoints": "checkpoints", "eval_after": "eval after", "report": "report",
          "other": "other"}  # fmt: skip


class PhaseTimer:
    """Seconds per phase of one run; started at construction."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)

        self.running: dict[str, float] = {}  # phase -> perf_counter at its start

    def start(self, name: str) -> None:
        """Start timing phase `name` (for a span too long to indent under `phase`)."""
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
        self.running[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        """Add the time since `start(name)` to phase `name`."""
        self.seconds[name] += time.perf_counter() - self.running.pop(name)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time spent inside the block to phase `name`."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def move(self, source: str, target: str, seconds: float) -> None:
        """Count `seconds` measured inside phase `source`'s block (e.g. checkpoint writes
        timed inside the step loop) as `target`'s instead."""
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def summary(self) -> dict:
        """{"wall_seconds", "seconds": {phase: s, ..., "other": wall - the phases}}."""
        wall = time.perf_counter() - self.started
        seconds = dict(self.seconds)
        seconds["other"] = max(wall - sum(seconds.values()), 0.0)
        return {"wall_seconds": wall, "seconds": seconds}


def format_shares(phases: dict) -> str:
    """One line: each phase's share of the wall time, largest first, phases under 0.5 % left
    out ("wall 312 s: steps 41 % · eval after 27 % · ...")."""
    wall = max(phases["wall_seconds"], 1e-9)
    shares = sorted(phases["seconds"].items(), key=lambda item: -item[1])
    parts = [f"{LABELS.get(name, name)} {100 * s / wall:.0f} %" for name, s in shares
             if s / wall >= 0.005]  # fmt: skip
    return f"wall {wall:.0f} s: " + " · ".join(parts)
