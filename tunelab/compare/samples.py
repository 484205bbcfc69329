"""A few eval prompts with every variant's output side by side, and the base model's: people
judge generations by reading them, and a score alone hides a fluent wrong answer or a loop.

Outputs come from each run's samples-after.jsonl (written by the run's "after" evaluation) and
the base model's from a samples-before.jsonl (the comparison's shared copy, else a run's own).
Runs are matched by position in the eval split: every variant evaluates the same rows in the
same order unless its data settings differ, so a sample is matched only where the reference
is the same; a variant that renders prompts differently (another template or system prompt)
is still matched, and flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.io import read_jsonl

SIDE_BY_SIDE = 4  # prompts shown
SHARED_SAMPLES = "samples-before.jsonl"  # the base model's outputs, beside OUTPUT/before.json


def side_by_side(rows: list[dict[str, Any]], output: Path, count: int = SIDE_BY_SIDE,
                 task: str | None = None) -> list:  # fmt: skip
    """[{prompt, reference, base, outputs: {variant: {text, same_prompt} | None}}] for the first
    `count` samples of the first finished variant that has any; `task`: that task's samples
    of multi-task runs (samples-after-tasks.jsonl) instead of the main eval's."""
    after = {
        row["variant"]: run_samples(Path(row["run_dir"]), "after", task)
        for row in rows
        if row["status"] == "finished"
    }
    shown = next((samples for samples in after.values() if samples), [])[:count]
    if task is None:
        base = base_samples(rows, output)
    else:
        base = next((s for r in rows if (s := run_samples(Path(r["run_dir"]), "before", task))), [])
    return [
        {
            "prompt": sample["prompt"],
            "reference": sample["reference"],
            "base": _match(base, index, sample),
            "outputs": {name: _match(samples, index, sample) for name, samples in after.items()},
        }
        for index, sample in enumerate(shown)
    ]


def run_samples(run_dir: Path, tag: str, task: str | None = None) -> list[dict[str, Any]]:
    """A run's generations of its `tag` ("before" | "after") evaluation: the main eval's, or
    with `task` that task's of a multi-task run."""
    if task is None:
        return read_jsonl(run_dir / f"samples-{tag}.jsonl")
    return [s for s in read_jsonl(run_dir / f"samples-{tag}-tasks.jsonl") if s["task"] == task]


def base_samples(rows: list[dict[str, Any]], output: Path) -> list[dict[str, Any]]:
    """The untouched model's samples: the comparison's shared copy, else the first run's own."""
    for path in [output / SHARED_SAMPLES, *(Path(r["run_dir"]) / SHARED_SAMPLES for r in rows)]:
        samples = read_jsonl(path)
        if samples:
            return samples
    return []


def _match(samples: list[dict], index: int, shown: dict) -> dict[str, Any] | None:
    """Sample `index` of `samples` as {text, same_prompt}, if it is the shown row's."""
    if index >= len(samples) or samples[index]["reference"] != shown["reference"]:
        return None
    sample = samples[index]
    return {"text": sample["prediction"], "same_prompt": sample["prompt"] == shown["prompt"]}
