"""`run_search(config)`: check the space, open (or resume) the study, run K local workers,
then write best.yaml, trials.csv and report.html into the output directory.

Workers: with one, trials run in this process; with K > 1, K fresh `spawn` processes share
the storage while this process polls it for the progress display. On several machines, run the same
command with the same `--storage` URL on each: they join one study.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

import optuna

from tunelab.errors import TunelabError
from tunelab.run_config import RunConfig, load_config
from tunelab.search.apply import check_space, settings_of
from tunelab.search.outputs import SearchResult, write_outputs
from tunelab.search.progress import SearchReporter, SilentSearchReporter
from tunelab.search.study import (
    check_trial_dirs,
    count_trials,
    default_storage,
    fail_dead_trials,
    open_study,
    run_worker,
)


def run_search(
    config: RunConfig | dict | str | Path,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    reporter: SearchReporter | None = None,
    overwrite: bool = False,
) -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials
    (default `search.trials`); return what was written and the best trial(s)."""
    cfg = load_config(config)
    settings = settings_of(cfg)
    check_space(cfg)
    reporter = reporter or SilentSearchReporter()
    target = trials or settings.trials
    url = storage or settings.storage or default_storage(cfg)
    check_trial_dirs(cfg, url, overwrite=overwrite)  # finished runs are never silently replaced
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, url)
    for number in fail_dead_trials(study):
        reporter.message(f"trial {number} was left running by a process that died: marked failed")
    remaining = target - count_trials(study)
    reporter.start(study, target)
    try:
        if remaining > 0:
            run_workers(cfg, url, target, max(1, min(workers, remaining)), reporter, study)
    except TunelabError:  # trials kept failing: still leave trials.csv with their errors
        write_outputs(study, cfg, url)
        raise
    finally:
        reporter.finish()
    return write_outputs(study, cfg, url)


def run_workers(cfg: RunConfig, url: str, target: int, workers: int, reporter, study) -> None:
    """One worker here, or `workers` spawned processes while this one shows progress;
    re-raise the first worker error once all have stopped."""
    if workers == 1:
        run_worker(cfg, url, target, 0, on_trial=reporter.update)
        return
    context = multiprocessing.get_context("spawn")  # fork after torch is loaded is unsafe
    threads = max(1, (os.cpu_count() or 1) // workers)  # K workers share the cores
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_process,
        initargs=(optuna.logging.get_verbosity(), threads),
    ) as pool:
        futures = [
            pool.submit(run_worker, cfg.to_dict(), url, target, index) for index in range(workers)
        ]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=2)
            reporter.update(study)
        for future in futures:
            future.result()


def _start_process(verbosity: int, threads: int) -> None:
    """In each worker process: the parent's Optuna log level, a fair share of CPU threads
    (`train.num_threads`, when set, still wins: the loop applies it per trial)."""
    import torch

    optuna.logging.set_verbosity(verbosity)
    torch.set_num_threads(threads)
