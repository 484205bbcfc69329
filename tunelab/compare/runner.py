"""compare(config) -> results: every variant (a method, or any other change to the base run
config) on the same data, seed and budget, each in its own process, one after another; then
results.json, results.md and report.html in OUTPUT/.

OUTPUT/base.json              the untouched base model: probe perplexity, inference cost
OUTPUT/before.json            the base model's scores on the eval data (shared by every run)
OUTPUT/samples-before.jsonl   ... and its generations, for the side-by-side outputs
OUTPUT/before-tasks/          ... and its per-task scores, each task scored once for all variants
OUTPUT/runs/<variant>/        an ordinary run directory (+ measurements.json, or error.log)
OUTPUT/runs/<variant>/seed-<s>/   ... one per seed with `seeds:` (results: compare.seeds)
OUTPUT/results.json           every row, the best variant per criterion, the Pareto fronts
OUTPUT/results.md             the table as Markdown
OUTPUT/report.html            one self-contained page: the table, charts and outputs

Resume: a run (a variant, or one seed of it) whose run directory holds summary.json and
measurements.json under the same config is done and skipped; a failed or interrupted one runs
again (from its last checkpoint, if it saved one). A failure is recorded and the rest go on.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
from pathlib import Path
from typing import Any

from tunelab.compare.config import CompareConfig, quality_metric, run_configs
from tunelab.compare.progress import CompareProgress
from tunelab.compare.report import render_report
from tunelab.compare.results import build_results, markdown, method_row
from tunelab.compare.samples import side_by_side
from tunelab.compare.seeds import RunKey, aggregate_rows, seed_section, seeded_runs
from tunelab.compare.tasks import paired_between_variants, split_quality
from tunelab.compare.worker import BASE, Job, is_finished, run_job
from tunelab.evaluate.metrics import METRICS
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.run_config import RunConfig

POLL_SECONDS = 0.2


def compare(cfg: CompareConfig, *, label: str = "config", progress: bool = True) -> dict:
    """Run (or resume) the comparison `cfg` describes; write and return its results."""
    configs = run_configs(cfg, label)  # every variant's config is valid before anything runs
    first = next(iter(configs.values()))
    quality = quality_metric(cfg, first, label)
    runs = seeded_runs(cfg, configs)
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    unit = "runs" if cfg.seeds else "variants" if cfg.variants else "methods"
    with CompareProgress(len(runs), enabled=progress, unit=unit) as view:
        base = _base_measurements(cfg, first, view)
        outcomes = {key: _run_method(cfg, key, run, view) for key, run in runs.items()}
    rows = [_row(key, runs[key], outcome, quality, base) for key, outcome in outcomes.items()]
    task, metric = split_quality(quality)
    higher = METRICS[metric].higher_is_better
    if cfg.seeds:
        rows = aggregate_rows(rows, quality)
    results = build_results(rows, quality=quality, base=base, budget=cfg.budget(),
                            higher_is_better=higher, variants=cfg.variants,
                            samples=side_by_side(rows, output, task=task))  # fmt: skip
    if cfg.seeds:
        results["seeds"] = seed_section(cfg, rows, higher_is_better=higher)
    else:
        results["task_pairs"] = paired_between_variants(rows, quality)
    write_outputs(output, results)
    return results


def _row(key: RunKey, run: RunConfig, outcome: dict, quality: str, base: dict) -> dict:
    """One run's result row; with seeds, its seed beside its variant."""
    row = method_row(key.variant, Path(run.output_dir), outcome, quality, base,
                     method=run.method.name)  # fmt: skip
    return row if key.seed is None else {**row, "seed": key.seed}


def write_outputs(output: Path, results: dict[str, Any]) -> None:
    atomic_write_json(output / "results.json", results)
    atomic_write_text(output / "results.md", markdown(results))
    atomic_write_text(output / "report.html", render_report(results))


def _run_method(cfg: CompareConfig, key: RunKey, run: RunConfig, view) -> dict[str, Any]:
    """{status, error, skipped} of one run: skipped when already finished, else run."""
    if is_finished(Path(run.output_dir), run):
        view.end(key.label, "finished earlier, skipped")
        return {"status": "finished", "error": None, "skipped": True}
    error = run_in_process(_job(cfg, key.label, run), view)
    view.end(key.label, "failed" if error else "finished", error)
    return {"status": "failed" if error else "finished", "error": error, "skipped": False}


def _base_measurements(cfg: CompareConfig, run: RunConfig, view) -> dict[str, Any]:
    """OUTPUT/base.json, measured once per base model (a failure leaves an `error` entry)."""
    path = Path(cfg.output_dir) / "base.json"
    if path.exists():
        base = json.loads(path.read_text(encoding="utf-8"))
        wanted = {"model": run.model.name, "inference_tokens": cfg.inference_tokens}
        if all(base.get(key) == value for key, value in wanted.items()):
            return base
    error = run_in_process(_job(cfg, BASE, run), view)
    view.end("base model", "failed" if error else "measured", error, counts=False)
    if error:
        return {"model": run.model.name, "error": error}
    return json.loads(path.read_text(encoding="utf-8"))


def _job(cfg: CompareConfig, name: str, run: RunConfig) -> Job:
    return Job(
        name=name,
        config=run.to_dict(),
        output_dir=str(cfg.output_dir),
        budget_seconds=cfg.budget_seconds,
        inference_tokens=cfg.inference_tokens,
        parent_pid=os.getpid(),
    )


def run_in_process(job: Job, view) -> str | None:
    """Run `job` in a fresh process, relaying its progress; None on success, else the error."""
    context = worker_context()
    events = context.Queue()
    process = context.Process(target=run_job, args=(job, events), name=f"tunelab-{job.name}")
    view.begin(job.name)
    process.start()
    try:
        outcome = _relay(events, process, view)
        process.join()
    finally:
        if process.is_alive():  # interrupted (Ctrl-C): do not leave a trainer behind
            process.terminate()
            process.join()
    if outcome is None:
        return f"the worker process ended without a result (exit code {process.exitcode})"
    return outcome[2]


def _relay(events, process, view) -> tuple | None:
    """Pass events to the view until the job's final ("done" | "failed") event, or until the
    process is gone with nothing left to read (a crash or a kill)."""
    while True:
        try:
            event = events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not process.is_alive():
                try:
                    event = events.get(timeout=1.0)  # a last event may still be in flight
                except queue.Empty:
                    return None
            else:
                continue
        if event[0] in ("done", "failed"):
            return event
        view.handle(event)


def worker_context():
    """A multiprocessing context whose fresh processes start fast: on platforms with a fork
    server, it imports torch and the training stack once and forks each worker from it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tunelab.compare.worker"])
    return context
