"""The base model's per-task scores shared between runs (training/shared_eval.py): a task scored
once is read back by a later run with the same rows and settings, gives the scores a fresh
evaluation gives, and anything that changes the scores changes the key."""

from __future__ import annotations

import json

import pytest

from tunelab import train
from tunelab.training import tasks as task_module


def config(tmp_path, name: str, tasks: list[str], method: str = "lora") -> dict:
    builtin = {
        "rev": {"name": "rev", "train": "builtin:reverse", "metrics": ["loss", "chrf"]},
        "json": {"name": "json", "train": "builtin:json", "metrics": ["loss", "exact_match"]},
        "sort": {"name": "sort", "train": "builtin:sort"},
    }
    return {
        "model": {"name": "random:llama"},
        "method": {"name": method},
        "data": {"max_length": 64, "max_eval_examples": 3, "builtin_size": 24,
                 "tasks": [builtin[task] for task in tasks]},
        "train": {"max_steps": 1, "batch_size": 4, "num_threads": 1, "progress": False},
        "eval": {"metrics": ["loss"], "max_new_tokens": 3},
        "output_dir": str(tmp_path / name),
    }  # fmt: skip


@pytest.fixture
def evaluated(monkeypatch):
    """The names of the tasks actually evaluated (not read back): before, then after training
    (the trained model's scores are never shared)."""
    names: list[str] = []
    real = task_module._evaluate_task

    def counting(model, tokenizer, task, cfg):
        names.append(task.name)
        return real(model, tokenizer, task, cfg)

    monkeypatch.setattr(task_module, "_evaluate_task", counting)
    return names


def before_of(run_dir) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = (run_dir / "samples-before-tasks.jsonl").read_text().splitlines()
    return ({name: task["before"] for name, task in summary["tasks"].items()},
            [json.loads(line) for line in samples])  # fmt: skip


def test_a_later_run_reads_back_the_tasks_scored_before(tmp_path, evaluated):
    shared = tmp_path / "shared"
    first = train(config(tmp_path, "a", ["rev", "json"]), shared_before=shared)
    assert evaluated == 2 * ["rev", "json"] and len(list(shared.glob("*.json"))) == 3  # + probes
    evaluated.clear()
    # another method and another mixture: the base model's scores on rev/json do not change
    second = train(config(tmp_path, "b", ["rev", "json", "sort"], "bitfit"), shared_before=shared)
    assert evaluated == ["sort", "rev", "json", "sort"]  # only sort before training
    scores_a, samples_a = before_of(first.run_dir)
    scores_b, samples_b = before_of(second.run_dir)
    assert {k: scores_b[k] for k in scores_a} == scores_a
    assert [s for s in samples_b if s["task"] != "sort"] == samples_a
    forgetting = [json.loads((run.run_dir / "summary.json").read_text())["forgetting"]
                  for run in (first, second)]  # fmt: skip
    assert [f[p]["before"] for f in forgetting for p in f] == 2 * [
        forgetting[0][p]["before"] for p in forgetting[0]
    ]


def test_read_back_scores_equal_a_fresh_evaluation(tmp_path, evaluated):
    shared = tmp_path / "shared"
    train(config(tmp_path, "a", ["rev", "json"]), shared_before=shared)
    reused = train(config(tmp_path, "b", ["json", "rev"]), shared_before=shared)
    assert evaluated == ["rev", "json", "rev", "json", "json", "rev"]  # nothing before b
    fresh = train(config(tmp_path, "c", ["json", "rev"]))
    assert evaluated[6:] == 2 * ["json", "rev"]
    reused_scores, reused_samples = before_of(reused.run_dir)
    fresh_scores, fresh_samples = before_of(fresh.run_dir)
    for task, scores in fresh_scores.items():
        assert reused_scores[task] == pytest.approx(scores, rel=1e-5)
    assert [s["prediction"] for s in reused_samples] == [s["prediction"] for s in fresh_samples]


@pytest.mark.parametrize(
    "change",
    [
        {"eval": {"metrics": ["loss"], "max_new_tokens": 4}},  # decoding length
        {"model": {"name": "random:qwen2"}},  # another base
    ],
)
def test_anything_the_scores_depend_on_changes_the_key(tmp_path, evaluated, change):
    shared = tmp_path / "shared"
    train(config(tmp_path, "a", ["rev"]), shared_before=shared)
    train({**config(tmp_path, "b", ["rev"]), **change}, shared_before=shared)
    assert evaluated == 4 * ["rev"]  # before and after, twice


def test_other_rows_are_evaluated_afresh(tmp_path, evaluated):
    shared = tmp_path / "shared"
    train(config(tmp_path, "a", ["rev"]), shared_before=shared)
    other = config(tmp_path, "b", ["rev"])
    other["data"]["seed"] = 1  # another seeded split: other eval rows
    train(other, shared_before=shared)
    assert evaluated == 4 * ["rev"]
