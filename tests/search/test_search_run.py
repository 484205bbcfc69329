"""`run_search` end to end on a tiny random model: outputs, best.yaml trains, resume (with a
trial left running by a dead process), forced pruning, and two worker processes on SQLite."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tunelab.errors import TunelabError
from tunelab.run_config import load_config
from tunelab.search import run_search
from tunelab.search import study as study_module
from tunelab.search.objective import owner
from tunelab.training.loop import train
from tunelab.training.progress import SilentReporter

from .conftest import tiny_config

SPACE = {
    "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "method.name": {"choice": ["lora", "ia3"]}},
    "per_method": {"lora": {"method.r": {"int": [1, 4]}}},
    "study_name": "tiny",
}


def _study(root) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'study.db'}")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished 4-trial search (shared: tests that change it work on a copy)."""
    root = tmp_path_factory.mktemp("search") / "out"
    result = run_search(tiny_config(root, **SPACE), trials=4)
    return root, result


def test_four_trials_write_every_output(searched):
    root, result = searched
    assert result.finished == 4 and result.counts["complete"] == 4
    for name in ("best.yaml", "trials.csv", "report.html", "study.db"):
        assert (root / name).is_file(), name
    rows = list(csv.DictReader((root / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["complete"] * 4
    assert {"train.lr", "method.name", "loss", "metric.trainable_params"} <= set(rows[0])
    for number in range(4):
        assert (root / "trials" / f"trial-{number:04d}" / "summary.json").is_file()
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<script" not in html
    best = min(rows, key=lambda row: float(row["loss"]))
    assert result.best[0].number == int(best["trial"])


def test_best_yaml_trains(searched, tmp_path):
    root, result = searched
    cfg = load_config(root / "best.yaml")
    assert cfg.search is None and cfg.output_dir == str(root / "best")
    assert cfg.method.name == result.best[0].config["method.name"]
    run = train(
        cfg,
        overrides=["train.max_steps=1", f"output_dir={tmp_path / 'best'}"],
        reporter=SilentReporter(),
    )
    assert (run.run_dir / "summary.json").is_file()


def test_resume_fails_dead_trial_and_adds_to_the_same_study(searched, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(searched[0], root)
    cfg = tiny_config(root, **SPACE)
    assert run_search(cfg, trials=4).finished == 4  # the target is met: nothing runs
    assert len(_study(root).trials) == 4

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a worker that died mid-trial: its trial stays RUNNING in the storage
    killed = _study(root).ask()
    killed.set_user_attr("worker", {**owner(), "pid": dead.pid})

    result = run_search(cfg, trials=5)
    trials = _study(root).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.FAIL] * 1 + [
        TrialState.COMPLETE
    ]
    assert trials[4].user_attrs["error"] == "worker process died mid-trial"
    assert result.finished == 5 and result.counts["fail"] == 1
    assert len(optuna.get_all_study_names(f"sqlite:///{root / 'study.db'}")) == 1


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(study_module, "build_pruner", lambda settings: AlwaysPrune())
    root = tmp_path / "out"
    result = run_search(tiny_config(root, pruner={"name": "median"}), trials=1)
    assert result.counts["pruned"] == 1 and result.finished == 1
    trial = optuna.load_study(study_name="out", storage=f"sqlite:///{root / 'study.db'}").trials[0]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [2]
    assert not (root / "trials" / "trial-0000" / "summary.json").exists()  # stopped at step 2
    assert not (root / "best.yaml").exists() and (root / "report.html").is_file()
    assert "pruned" in (root / "trials.csv").read_text()


def test_two_workers_share_one_sqlite_study(tmp_path):
    root = tmp_path / "out"
    result = run_search(tiny_config(root, **SPACE), trials=4, workers=2)
    trials = _study(root).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    assert 4 <= len(trials) <= 5  # a worker may start one trial past the target
    assert result.counts["fail"] == 0
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    # Both are spawned processes; on a loaded machine one may finish the tiny trials before
    # the other has imported torch, so the proof of sharing is: no lock error, no lost trial.
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids


def test_multi_objective_writes_the_pareto_front(tmp_path):
    root = tmp_path / "out"
    objectives = [{"metric": "loss"}, {"metric": "trainable_params"}]
    result = run_search(tiny_config(root, **SPACE, objective=objectives), trials=2)
    assert result.objective_names == ["loss", "trainable_params"]
    assert result.best and all(len(best.values) == 2 for best in result.best)
    front = sorted(p.name for p in (root / "pareto").glob("*.yaml"))
    assert front == [
        f"trial-{best.number:04d}.yaml" for best in sorted(result.best, key=lambda b: b.number)
    ]
    assert load_config(root / "best.yaml").search is None
    assert "Pareto front" in (root / "report.html").read_text()


def test_trials_that_keep_failing_stop_the_search_with_their_error(tmp_path):
    raw = tiny_config(tmp_path / "out")
    raw["data"]["train"] = str(tmp_path / "missing.jsonl")  # valid config, fails in every trial
    with pytest.raises(TunelabError, match="3 trials in a row failed; last trial 2: DataError"):
        run_search(raw, trials=5)
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["fail"] * 3 and "missing.jsonl" in rows[0]["error"]
