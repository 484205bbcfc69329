"""The Optuna study behind `tunelab search`: storage, sampler, pruner, stale trials, workers.

Storage: any database URL Optuna accepts; by default a SQLite file OUTPUT/study.db. SQLite
connections wait up to 60 s for a lock, so several local workers share one file safely.
Heartbeats (every 30 s) let any worker fail a trial whose process stopped beating for 2 min;
on start, a trial left RUNNING by a dead process on this host is failed at once.

`target`: a worker keeps starting trials until the study holds `target` finished (complete or
pruned) trials, counting trials other workers are running. Rerunning with the same target
therefore finishes an interrupted search; a larger target extends it. Failed trials do not
count; three failures in a row stop a worker with an error.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tunelab.compat import fail_trial
from tunelab.errors import ConfigError, TunelabError
from tunelab.run_config import RunConfig, load_config
from tunelab.search.apply import settings_of
from tunelab.search.objective import TrialRunner
from tunelab.search.space import SearchSettings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FAILURE_LIMIT = 3


def default_storage(cfg: RunConfig) -> str:
    return f"sqlite:///{(Path(cfg.output_dir) / 'study.db').resolve()}"


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` as documented: SQLAlchemy reads it as psycopg2, which `tunelab[postgres]`
    does not install; with psycopg (3) installed and psycopg2 not, name that driver."""
    import importlib.util

    if not url.startswith(("postgresql://", "postgres://")):
        return url
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    url = sqlalchemy_url(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120
            )
    except Exception as error:  # bad URL, missing driver, unreachable server
        raise ConfigError(
            f"--storage {url}: cannot open ({type(error).__name__}: {error})"
        ) from None


def build_sampler(settings: SearchSettings, seed: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "nsga2":
        size = max(settings.startup_trials, 2)
        return optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=settings.startup_trials, seed=seed)


def build_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    pruner = settings.pruner
    if pruner.name == "none" or settings.multi_objective:
        return optuna.pruners.NopPruner()
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps
    )


def open_study(cfg: RunConfig, url: str, worker: int = 0) -> optuna.Study:
    """Create or load the study; its sampler is seeded by `search.seed`, the worker index and
    the trials already in the study (so a resumed or parallel worker does not repeat points)."""
    settings = settings_of(cfg)
    name = settings.study_name or Path(cfg.output_dir).name
    directions = [o.direction for o in settings.objective]
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        directions=directions,
        pruner=build_pruner(settings),
        load_if_exists=True,
    )
    objectives = [f"{o.metric}:{o.direction}" for o in settings.objective]
    known = study.user_attrs.get("objectives")
    if known is None:
        study.set_user_attr("objectives", objectives)
    elif known != objectives:
        raise ConfigError(
            f"search.objective: study {name!r} optimises {', '.join(known)}; "
            "use another output_dir or search.study_name for a different objective"
        )
    seed = settings.seed + 1000 * worker + len(study.get_trials(deepcopy=False))
    study.sampler = build_sampler(settings, seed)
    return study


def check_trial_dirs(cfg: RunConfig, url: str, *, overwrite: bool) -> None:
    """Finished trial runs in OUTPUT/trials/ that the study does not know (another study, or
    one whose database was deleted) would be replaced by new trials of the same number: refuse,
    or with `overwrite` remove them first."""
    trials = Path(cfg.output_dir) / "trials"
    finished = sorted(p for p in trials.glob("trial-*") if (p / "summary.json").is_file())
    if not finished:
        return
    known = _study_trial_numbers(cfg, url)
    foreign = [p for p in finished if int(p.name.removeprefix("trial-")) not in known]
    if foreign and not overwrite:
        raise ConfigError(
            f"{trials}: {len(foreign)} finished trial runs ({foreign[0].name}, ...) belong to no "
            "trial of this study and would be replaced; pass --overwrite or use another output_dir"
        )
    for folder in foreign:
        shutil.rmtree(folder)


def _study_trial_numbers(cfg: RunConfig, url: str) -> set[int]:
    """Trial numbers of this search's study, without creating the database or the study."""
    if url == default_storage(cfg) and not (Path(cfg.output_dir) / "study.db").exists():
        return set()
    name = settings_of(cfg).study_name or Path(cfg.output_dir).name
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return set()
    return {trial.number for trial in storage.get_all_trials(study_id, deepcopy=False)}


def count_trials(study: optuna.Study, states=FINISHED) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAILED the RUNNING trials whose process on this host has died; return their numbers.
    Trials of other hosts are left to the heartbeat (failed once they stop beating)."""
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or _alive(int(worker.get("pid", -1))):
            continue
        if fail_trial(study, trial, "worker process died mid-trial"):
            failed.append(trial.number)  # else another worker failed it first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' trials whose heartbeat stopped
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopAtTarget:
    """Stop when finished plus running trials reach the target (running ones will finish)."""

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, study: optuna.Study, trial) -> None:
        if count_trials(study, (*FINISHED, TrialState.RUNNING)) >= self.target:
            study.stop()


class StopAfterFailures:
    """Stop a worker after FAILURE_LIMIT failed trials in a row (a broken config or space)."""

    def __init__(self) -> None:
        self.streak, self.last_error = 0, ""

    def __call__(self, study: optuna.Study, trial) -> None:
        if trial.state != TrialState.FAIL:
            self.streak = 0
            return
        self.streak += 1
        self.last_error = f"trial {trial.number}: {trial.user_attrs.get('error', 'failed')}"
        if self.streak >= FAILURE_LIMIT:
            study.stop()

    def check(self) -> None:
        if self.streak >= FAILURE_LIMIT:
            raise TunelabError(
                f"search: {FAILURE_LIMIT} trials in a row failed; last {self.last_error}"
            )


def run_worker(
    cfg: RunConfig | dict, url: str, target: int, worker: int = 0, on_trial=None
) -> None:
    """One worker: run trials until the study reaches `target` finished trials."""
    cfg = load_config(cfg)
    study = open_study(cfg, url, worker)
    if count_trials(study, (*FINISHED, TrialState.RUNNING)) >= target:
        return
    failures = StopAfterFailures()
    callbacks = [failures, StopAtTarget(target)]
    if on_trial is not None:
        callbacks.append(lambda study, trial: on_trial(study))
    prune = settings_of(cfg).pruner.name != "none" and not settings_of(cfg).multi_objective
    study.optimize(
        TrialRunner(cfg, prune=prune), catch=(Exception,), callbacks=callbacks, gc_after_trial=True
    )
    failures.check()
