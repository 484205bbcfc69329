"""One job of a comparison, run in its own process: train one method (then measure it), or
measure the untouched base model.

Why a process per job: peak memory on CPU is the process's lifetime maximum resident set
size, so only a fresh process measures one method alone; a crash (or an out-of-memory kill)
takes down one method, not the comparison; and no state (seeds, accelerate's singletons,
threads) leaks from one method into the next. The parent learns what happens through
`events`, a queue of tuples:

    ("start", name, total_steps, completed)   ("update", name, step, fraction, loss)
    ("message", name, text)                   ("finish", name)
    ("done", name, None)                      ("failed", name, "ErrorType: message")
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers.utils.logging import disable_progress_bar

from tunelab.compare.measure import measure_base, measure_run
from tunelab.compare.samples import SHARED_SAMPLES
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.run import RunFiles
from tunelab.run_config import RunConfig, load_config
from tunelab.training.checkpoint import latest_checkpoint
from tunelab.training.loop import StopTraining, train

BASE = "base"  # the job that measures the untouched model
MEASUREMENTS = "measurements.json"  # in each run directory, beside summary.json
ERROR_LOG = "error.log"  # in a failed method's run directory: the traceback
SHARED_BEFORE = "before.json"  # in the comparison's folder: the base model's scores, shared
SHARED_TASKS = "before-tasks"  # ... and its per-task scores (training/shared_eval.py)


@dataclass(frozen=True)
class Job:
    """What a worker process needs: plain data only (it crosses a process boundary)."""

    name: str  # a method name, or BASE
    config: dict[str, Any]  # the method's resolved run config
    output_dir: str  # the comparison's folder
    budget_seconds: float | None
    inference_tokens: int
    parent_pid: int | None = None  # the comparison's process: the worker ends when it is gone


class QueueReporter:
    """The loop's Reporter, forwarding progress to the parent; it also keeps the wall-time
    budget, whose clock starts with the first optimizer step (evaluation is not counted)."""

    def __init__(self, events, name: str, budget_seconds: float | None) -> None:
        self.events, self.name, self.budget_seconds = events, name, budget_seconds
        self.started: float | None = None
        self.total_steps = 1

    def start(self, description: str, total_steps: int, completed: int = 0) -> None:
        self.started, self.total_steps = time.monotonic(), max(total_steps, 1)
        self.events.put(("start", self.name, total_steps, completed))

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        self.events.put(("update", self.name, step, self.fraction(step), metrics.get("loss")))

    def message(self, text: str) -> None:
        self.events.put(("message", self.name, text))

    def finish(self) -> None:
        self.events.put(("finish", self.name))

    def fraction(self, step: int) -> float:
        """How much of the budget is spent: steps, or time when that runs out sooner."""
        done = step / self.total_steps
        if self.budget_seconds and self.started is not None:
            done = max(done, (time.monotonic() - self.started) / self.budget_seconds)
        return min(done, 1.0)

    def check_budget(self, step: int) -> None:
        """`on_step` hook: stop training (gracefully) once the time budget is spent."""
        if self.budget_seconds and self.started is not None:
            if time.monotonic() - self.started >= self.budget_seconds:
                raise StopTraining


def run_job(job: Job, events) -> None:
    """Process entry point: run `job`; finally put ("done" | "failed", name, error) on `events`."""
    disable_progress_bar()  # the parent draws the one progress view
    watch_parent(job.parent_pid)
    try:
        threads = job.config.get("train", {}).get("num_threads")
        if threads:  # measurements too run on the configured number of threads
            torch.set_num_threads(threads)
        if job.name == BASE:
            result = measure_base(load_config(job.config), job.inference_tokens)
            result["inference_tokens"] = job.inference_tokens
            atomic_write_json(Path(job.output_dir) / "base.json", result)
        else:
            train_and_measure(job, events)
        events.put(("done", job.name, None))
    except Exception as exc:  # recorded, and the comparison goes on with the next method
        log = Path(job.config.get("output_dir", job.output_dir)) / ERROR_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc(), encoding="utf-8")
        events.put(("failed", job.name, f"{type(exc).__name__}: {exc}"))


def watch_parent(pid: int | None, interval: float = 0.1) -> None:
    """End this process soon after the comparison that started it is gone (killed, so it
    could not stop its worker): a worker left behind would go on writing into a run folder
    that a rerun of the comparison is about to resume."""
    if pid is None:
        return
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        os._exit(1)

    def alive() -> bool:  # is_running also checks the start time, so a reused pid is not it
        try:
            return parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while alive():
            time.sleep(interval)
        os._exit(1)  # no cleanup to wait for: every artifact is written atomically

    threading.Thread(target=watch, name="tunelab-watch-parent", daemon=True).start()


def train_and_measure(job: Job, events) -> None:
    """Train (or finish) the method's run, then write its measurements beside its summary."""
    cfg = load_config(job.config)
    files = RunFiles(Path(cfg.output_dir))
    resume = prepare_run(files, cfg, Path(job.output_dir))
    reporter = QueueReporter(events, job.name, job.budget_seconds)
    result = train(cfg, resume=resume, reporter=reporter, on_step=reporter.check_budget,
                   shared_before=Path(job.output_dir) / SHARED_TASKS)  # fmt: skip
    shared = Path(job.output_dir) / SHARED_BEFORE
    if not shared.exists() and files.before.exists():
        if files.samples("before").exists():  # the base model's outputs, for the report
            text = files.samples("before").read_text(encoding="utf-8")
            atomic_write_text(Path(job.output_dir) / SHARED_SAMPLES, text)
        atomic_write_json(shared, {"key": before_key(cfg), "scores": files.read_before()})
    reporter.message(f"{job.name}: measuring forgetting and inference cost")
    measurements = measure_run(result.run_dir, cfg, job.inference_tokens)
    atomic_write_json(files.root / MEASUREMENTS, measurements)


def same_run(files: RunFiles, cfg: RunConfig) -> bool:
    """The folder holds a run of exactly this config, so what it finished can be reused."""
    return files.config.exists() and load_config(files.config).to_dict() == cfg.to_dict()


def is_finished(run_dir: Path, cfg: RunConfig) -> bool:
    """Trained and measured, under this same config (a changed budget or override reruns)."""
    files = RunFiles(run_dir)
    return files.summary.exists() and (run_dir / MEASUREMENTS).exists() and same_run(files, cfg)


def prepare_run(files: RunFiles, cfg: RunConfig, output: Path) -> bool:
    """Whether `train` should resume. A finished or checkpointed run of this same config is
    kept; anything else is cleared. The base model's "before" scores are the same for every
    method, so the first method to finish shares them (OUTPUT/before.json) and later ones
    start from that copy instead of evaluating the base model again."""
    if same_run(files, cfg) and (
        files.summary.exists() or latest_checkpoint(files.checkpoints) is not None
    ):
        return True
    files.reset()
    for leftover in (ERROR_LOG, MEASUREMENTS):
        (files.root / leftover).unlink(missing_ok=True)
    shared = output / SHARED_BEFORE
    if not shared.exists():
        return False
    saved = json.loads(shared.read_text(encoding="utf-8"))
    if saved.get("key") != before_key(cfg):
        return False
    atomic_write_json(files.before, saved["scores"])
    return True  # keeps before.json; with no checkpoint, training starts at step 0


def before_key(cfg: RunConfig) -> dict[str, Any]:
    """What the base model's "before" scores depend on."""
    return {name: getattr(cfg, name).model_dump(mode="json") for name in ("model", "data", "eval")}
