"""What a search leaves in its output directory (all written atomically, rewritten on each run):

OUTPUT/study.db       the Optuna study (default storage; resume by rerunning the command)
OUTPUT/trials/trial-NNNN/   each trial's run directory (config.yaml, metrics.jsonl, summary.json)
OUTPUT/trials.csv     one row per trial: state, objective values, sampled keys, metrics, error
OUTPUT/best.yaml      the best trial's config, ready for `tunelab train` (output_dir OUTPUT/best);
                      multi-objective: the Pareto trial best on the first objective
OUTPUT/pareto/trial-NNNN.yaml   multi-objective only: every trial on the Pareto front
OUTPUT/report.html    history, importances, parallel coordinates, slices, Pareto front
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab.io import atomic_write_text
from tunelab.run_config import RunConfig, dump_config, load_config
from tunelab.search.apply import trial_config
from tunelab.search.progress import objective_names


@dataclass
class BestTrial:
    number: int
    values: list[float]
    config: dict[str, Any]
    run_dir: str


@dataclass
class SearchResult:
    output_dir: Path
    study_name: str
    storage: str
    objective_names: list[str]
    finished: int
    counts: dict[str, int]
    best: list[BestTrial] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Single objective: [the best trial]; multi: the Pareto front, best first objective first."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(study.best_trials, key=lambda t: sign * t.values[0])


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """trials.csv: one flat row per trial; sampled keys and metrics keep their own names."""
    names = objective_names(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        complete = trial.state == TrialState.COMPLETE  # a pruned trial's value is its eval loss
        values = trial.values if complete else [None] * len(names)
        duration = trial.duration.total_seconds() if trial.duration else None
        steps = max(trial.intermediate_values, default=None)
        row = {"trial": trial.number, "state": trial.state.name.lower()}
        row.update(dict(zip(names, values, strict=False)))
        row.update({"duration_s": duration, "last_eval_step": steps})
        row.update(trial.user_attrs.get("config", {}))
        row.update({f"metric.{k}": v for k, v in trial.user_attrs.get("metrics", {}).items()})
        row["run_dir"] = trial.user_attrs.get("run_dir")
        row["error"] = trial.user_attrs.get("error")
        rows.append(row)
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["trial", "state"]
    columns.sort(key=lambda c: (c in ("run_dir", "error"), c.startswith("metric.")))  # stable
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def trial_yaml(cfg: RunConfig, trial: FrozenTrial, output_dir: str, names: list[str]) -> str:
    """A trial's config as a ready-to-train YAML file, headed by where it came from."""
    config = load_config(trial_config(cfg, trial.user_attrs.get("config", {}), output_dir))
    scores = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values, strict=False))
    header = f"# trial {trial.number} of search {cfg.output_dir}: {scores}\n"
    return header + dump_config(config)


def write_outputs(study: optuna.Study, cfg: RunConfig, url: str) -> SearchResult:
    """Write trials.csv, best.yaml (+ pareto/), report.html; return a summary of the study."""
    from tunelab.report.search_report import search_report_html

    root, names = Path(cfg.output_dir), objective_names(study)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    finished = counts["complete"] + counts["pruned"]
    result = SearchResult(root, study.study_name, url, names, finished, counts)
    result.files["trials_csv"] = root / "trials.csv"
    atomic_write_text(result.files["trials_csv"], csv_text(trial_rows(study)))
    best = best_trials(study)
    result.best = [_best(trial) for trial in best]
    if best:
        result.files["best_yaml"] = root / "best.yaml"
        text = trial_yaml(cfg, best[0], str(root / "best"), names)
        atomic_write_text(result.files["best_yaml"], text)
    if len(study.directions) > 1:
        _write_pareto(cfg, best, root / "pareto", names)
    result.files["report_html"] = root / "report.html"
    atomic_write_text(result.files["report_html"], search_report_html(study, names, best))
    return result


def _best(trial: FrozenTrial) -> BestTrial:
    attrs = trial.user_attrs
    return BestTrial(
        trial.number, list(trial.values), attrs.get("config", {}), attrs.get("run_dir", "")
    )


def _write_pareto(cfg: RunConfig, front: list[FrozenTrial], folder: Path, names: list[str]) -> None:
    """pareto/trial-NNNN.yaml for each front trial; files of trials no longer on it go."""
    keep = {f"trial-{trial.number:04d}.yaml": trial for trial in front}
    for stale in folder.glob("trial-*.yaml"):
        if stale.name not in keep:
            stale.unlink()
    for name, trial in keep.items():
        run_dir = str(Path(cfg.output_dir) / f"best-{trial.number:04d}")
        atomic_write_text(folder / name, trial_yaml(cfg, trial, run_dir, names))
